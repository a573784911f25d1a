// Python bindings of the native decoder: BeamDecoder (one LM, many utterances, threaded batches).
// The search itself is in search.hh; emgscale/decode/reference.py is its specification.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "search.hh"

namespace py = pybind11;

namespace emgscale_beam {

class BeamDecoder {
 public:
  // label_tokens[c]: the LM token of label c ("" for labels that are not LM tokens); actions[c]: the
  // Action for label c when an LM is loaded (kScore labels whose token is out of the LM vocabulary
  // become boundaries, as in the reference decoder).
  BeamDecoder(const std::string& lm_path, std::vector<std::string> label_tokens, std::vector<int> actions,
              int blank, int beam_size, double beam_threshold, double label_threshold, int max_labels,
              double lm_weight, double insertion_bonus, int64_t gc_min_nodes)
      : actions_(std::move(actions)) {
    if (label_tokens.size() != actions_.size())
      throw std::invalid_argument("label_tokens and actions differ in length");
    if (blank < 0 || blank >= static_cast<int>(actions_.size()))
      throw std::invalid_argument("blank label out of range");
    if (beam_size < 1) throw std::invalid_argument("beam_size must be >= 1");
    if (gc_min_nodes < 1) throw std::invalid_argument("gc_min_nodes must be >= 1");
    opt_ = {blank, beam_size, beam_threshold, label_threshold, max_labels, lm_weight, insertion_bonus,
            static_cast<size_t>(gc_min_nodes)};
    words_.assign(actions_.size(), 0);
    if (!lm_path.empty()) {
      lm_ = std::make_unique<LanguageModel>(lm_path);
      for (size_t c = 0; c < actions_.size(); ++c) {
        if (actions_[c] != kScore) continue;
        lm::WordIndex w = label_tokens[c] == "</s>" ? 0 : lm_->index(label_tokens[c]);
        if (w == 0) actions_[c] = kBoundary;  // </s>, or out of the LM's vocabulary
        words_[c] = w;
      }
    }
  }

  int num_classes() const { return static_cast<int>(actions_.size()); }
  int lm_order() const { return lm_ ? lm_->order() : 0; }
  std::vector<int> actions() const { return actions_; }

  Result run(const float* lp, int64_t length, int n) const {
    Search s(lm_.get(), actions_, words_, opt_);
    const int C = num_classes();
    for (int64_t t = 0; t < length; ++t) s.step(lp + t * C, C);
    return s.finish(n);
  }

  py::list nbest(py::array_t<float, py::array::c_style | py::array::forcecast> log_probs, int64_t length, int n) {
    check(log_probs, 2);
    length = resolve_length(length, log_probs.shape(0));
    Result r;
    {
      py::gil_scoped_release release;
      r = run(log_probs.data(), length, n);
    }
    py::list out;
    for (size_t i = 0; i < r.labels.size(); ++i) out.append(py::make_tuple(r.labels[i], r.scores[i]));
    return out;
  }

  std::vector<std::vector<int>> decode_batch(py::array_t<float, py::array::c_style | py::array::forcecast> log_probs,
                                             std::vector<int64_t> lengths, int num_threads) {
    check(log_probs, 3);
    const int64_t B = log_probs.shape(0), T = log_probs.shape(1), C = log_probs.shape(2);
    if (static_cast<int64_t>(lengths.size()) != B)
      throw std::invalid_argument("lengths must have one entry per batch item");
    for (int64_t& l : lengths) l = resolve_length(l, T);
    std::vector<std::vector<int>> out(B);
    const float* base = log_probs.data();
    {
      py::gil_scoped_release release;
      parallel_for(B, num_threads, [&](int64_t i) { out[i] = run(base + i * T * C, lengths[i], 1).labels[0]; });
    }
    return out;
  }

  // Best labels of each (T_i, C) utterance of a list (no padding), num_threads utterances at a time.
  std::vector<std::vector<int>> decode_list(
      const std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>>& items, int num_threads) {
    for (const auto& a : items) check(a, 2);
    std::vector<std::vector<int>> out(items.size());
    std::vector<std::pair<const float*, int64_t>> views;
    for (const auto& a : items) views.emplace_back(a.data(), a.shape(0));
    {
      py::gil_scoped_release release;
      parallel_for(static_cast<int64_t>(items.size()), num_threads,
                   [&](int64_t i) { out[i] = run(views[i].first, views[i].second, 1).labels[0]; });
    }
    return out;
  }

  // For BeamStream: a fresh search over this decoder's LM and settings (the decoder must outlive it).
  Search* new_search() const { return new Search(lm_.get(), actions_, words_, opt_); }

  double score_labels(const std::vector<int>& labels, bool eos) const {
    for (int c : labels)
      if (c < 0 || c >= num_classes() || c == opt_.blank) throw std::invalid_argument("label out of range (or blank)");
    Search s(lm_.get(), actions_, words_, opt_);
    return s.score_labels(labels, eos);
  }

 private:
  void check(const py::array_t<float, py::array::c_style | py::array::forcecast>& a, int ndim) const {
    if (a.ndim() != ndim) throw std::invalid_argument("log_probs must have " + std::to_string(ndim) + " dimensions");
    if (a.shape(ndim - 1) != num_classes())
      throw std::invalid_argument("log_probs has " + std::to_string(a.shape(ndim - 1)) + " classes, expected " +
                                  std::to_string(num_classes()));
  }
  // fn(0) ... fn(n - 1) on up to num_threads threads (the calling one included), handed out in
  // order; the first exception is rethrown after every thread has stopped.
  template <typename Fn>
  static void parallel_for(int64_t n, int num_threads, Fn fn) {
    std::atomic<int64_t> next(0);
    std::vector<std::exception_ptr> errors(std::max(num_threads, 1));
    auto work = [&](int k) {
      try {
        for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
      } catch (...) {
        errors[k] = std::current_exception();
        next = n;  // stop the others early
      }
    };
    int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, n)));
    std::vector<std::thread> pool;
    for (int k = 1; k < nt; ++k) pool.emplace_back(work, k);
    work(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }
  static int64_t resolve_length(int64_t length, int64_t T) {
    if (length < 0) return T;
    if (length > T)
      throw std::invalid_argument("length " + std::to_string(length) + " exceeds " + std::to_string(T) + " frames");
    return length;
  }

  std::vector<int> actions_;
  std::vector<lm::WordIndex> words_;
  Options opt_;
  std::unique_ptr<LanguageModel> lm_;
};

// Incremental decoding: one search fed frames as they come; the labels of a prefix are *committed*
// (returned, never retracted) once every hypothesis of the beam shares it, or, with lookahead >= 0,
// once the best hypothesis's prefix entered the beam at least `lookahead` frames ago (the beam is then
// restricted to that prefix, so later frames cannot contradict it). Without a look-ahead the final
// labels equal the offline search's.
class BeamStream {
 public:
  BeamStream(const BeamDecoder& dec, int64_t lookahead) : search_(dec.new_search()), lookahead_(lookahead),
                                                          num_classes_(dec.num_classes()) {}

  std::vector<int> push(py::array_t<float, py::array::c_style | py::array::forcecast> log_probs) {
    if (finished_) throw std::runtime_error("push after finish: start a new stream");
    if (log_probs.ndim() != 2 || log_probs.shape(1) != num_classes_)
      throw std::invalid_argument("log_probs must have shape (T, " + std::to_string(num_classes_) + ")");
    const int64_t T = log_probs.shape(0);
    std::vector<int> out;
    {
      py::gil_scoped_release release;
      const float* p = log_probs.data();
      for (int64_t t = 0; t < T; ++t) search_->step(p + t * num_classes_, num_classes_);
      out = commit();
    }
    return out;
  }

  // The rest of the final best hypothesis (end-of-sentence scores included).
  std::vector<int> finish() {
    if (finished_) return {};
    finished_ = true;
    Result r = search_->finish(1);
    const std::vector<int>& all = r.labels[0];
    if (static_cast<int64_t>(all.size()) < depth_) return {};
    return std::vector<int>(all.begin() + depth_, all.end());
  }

  // The current best hypothesis's labels after the committed ones (may still change).
  std::vector<int> partial() const {
    if (search_->empty()) return {};
    return search_->labels_after(search_->best_node(), static_cast<int32_t>(depth_));
  }

  int64_t frames() const { return search_->frames(); }
  int64_t committed() const { return depth_; }

 private:
  std::vector<int> commit() {
    if (search_->empty()) return {};
    int32_t target = search_->common_node();
    bool forced = false;
    if (lookahead_ >= 0) {
      int32_t old = search_->entered_by(search_->best_node(), search_->frames() - 1 - lookahead_);
      if (search_->node(old).depth > search_->node(target).depth) target = old, forced = true;
    }
    if (search_->node(target).depth <= depth_) return {};
    std::vector<int> labels = search_->labels_after(target, static_cast<int32_t>(depth_));
    if (forced) search_->restrict_to(target);
    depth_ = search_->node(target).depth;
    return labels;
  }

  std::unique_ptr<Search> search_;
  int64_t lookahead_;
  int num_classes_;
  int64_t depth_ = 0;
  bool finished_ = false;
};

}  // namespace emgscale_beam

using emgscale_beam::BeamDecoder;
using emgscale_beam::BeamStream;


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Backspace-aware CTC prefix beam search with a KenLM n-gram (emgscale)";
  m.attr("KENLM_MAX_ORDER") = KENLM_MAX_ORDER;
  py::class_<BeamDecoder>(m, "BeamDecoder")
      .def(py::init<const std::string&, std::vector<std::string>, std::vector<int>, int, int, double, double, int,
                    double, double, int64_t>(),
           py::arg("lm_path"), py::arg("label_tokens"), py::arg("actions"), py::arg("blank"), py::arg("beam_size"),
           py::arg("beam_threshold"), py::arg("label_threshold"), py::arg("max_labels"), py::arg("lm_weight"),
           py::arg("insertion_bonus"), py::arg("gc_min_nodes") = 1 << 12)
      .def_property_readonly("num_classes", &BeamDecoder::num_classes)
      .def_property_readonly("lm_order", &BeamDecoder::lm_order)
      .def_property_readonly("actions", &BeamDecoder::actions)
      .def("nbest", &BeamDecoder::nbest, py::arg("log_probs"), py::arg("length"), py::arg("n"))
      .def("decode_batch", &BeamDecoder::decode_batch, py::arg("log_probs"), py::arg("lengths"),
           py::arg("num_threads") = 1)
      .def("decode_list", &BeamDecoder::decode_list, py::arg("items"), py::arg("num_threads") = 1)
      .def("score_labels", &BeamDecoder::score_labels, py::arg("labels"), py::arg("eos"))
      .def("stream", [](const BeamDecoder& d, int64_t lookahead) { return new BeamStream(d, lookahead); },
           py::arg("lookahead"), py::keep_alive<0, 1>());
  py::class_<BeamStream>(m, "BeamStream")
      .def("push", &BeamStream::push, py::arg("log_probs"))
      .def("finish", &BeamStream::finish)
      .def("partial", &BeamStream::partial)
      .def_property_readonly("frames", &BeamStream::frames)
      .def_property_readonly("committed", &BeamStream::committed);
}
