// Backspace-aware CTC prefix beam search with a KenLM character n-gram (emgscale native decoder).
//
// The algorithm and every scoring rule are mirrored step for step by the pure-Python reference in
// emgscale/decode/reference.py; tests check that both give the same hypotheses. Read that file first:
// it is the specification, this one is the fast version.
//
// Hypotheses are label prefixes, merged by a 64-bit rolling hash of the label sequence. Each keeps
// the log-probability of ending in blank (b) and in a non-blank (nb), a node in a label trie (to read
// the labels back), and a node in an LM trie: the LM trie holds one KenLM state per LM token of the
// *text after edits*, so a backspace moves to the parent node (pops the last character and undoes its
// score) and "ab<bksp>c" is scored exactly as "ac". Both tries are garbage-collected, so memory stays
// bounded on hour-long sessions and time is linear in length.
//
// Where the time goes (perf on simulated typing, beam 50, 6-gram): per frame ~240 extensions pass
// the cheap bound and ask the LM-step cache, ~20-40 of them call KenLM, and ~5 new prefixes survive
// the exact cutoff. What keeps it fast, all without changing the result: labels under the first cut
// are never sorted or tried; a new prefix is dropped as soon as its exact score is under the cutoff
// (it gets no other contribution in the frame), so only survivors become entries; the cache slot of
// an LM step carries the score, and the cache keeps only the newest entries so it stays in the CPU's
// cache; hypothesis totals are computed once; the frame map is sized to the frame.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "kenlm_model.hh"
#include "util.hh"

namespace emgscale_beam {

struct Options {
  int blank = 98;
  int beam_size = 50;
  double beam_threshold = 0.0;   // <= 0: off
  double label_threshold = 0.0;  // <= 0: off
  int max_labels = 0;            // <= 0: off
  double lm_weight = 0.0;
  double insertion_bonus = 0.0;
  // The tries are collected when they grow past max(this, 2 x live nodes); the LM-step cache holds
  // at most this many entries.
  size_t gc_min_nodes = 1 << 12;
};

struct LMNode {
  int32_t parent;
  uint32_t key;   // word index + 1 for a scored token, 0 for a boundary (cache key with parent)
  float score;    // log10 score of this node's token given the parent context
  bool bos;       // the KenLM state is the begin-of-sentence state
  lm::ngram::State state;
};

// A label-trie node: one label prefix (parent prefix + label), with what streaming needs to commit it.
struct TrieNode {
  int32_t parent;
  int32_t label;
  int32_t depth;   // labels in the prefix
  int64_t frame;   // frame at which the prefix entered the beam
  uint64_t hash;   // the prefix's rolling hash (equal prefixes, equal hashes)
};

struct Hyp {
  uint64_t hash, parent_hash;  // parent_hash: the prefix without its last label (0 for the root)
  int32_t node;  // label trie
  int32_t lm;    // LM trie
  int32_t last;  // last label, -1 for the empty prefix
  double b, nb;
  double total;  // log_add(b, nb), computed once when the hypothesis enters the beam
};

// A candidate for the next beam: an existing hypothesis (node >= 0) or a new extension.
struct Entry {
  uint64_t hash, parent_hash;
  int32_t node, parent, label, lm, last;
  double b, nb, total;
  bool extended;  // received its (unique) extension contribution this frame
};

struct Result {
  std::vector<std::vector<int>> labels;
  std::vector<double> scores;
};

class Search {
 public:
  Search(const LanguageModel* lm, const std::vector<int>& actions, const std::vector<lm::WordIndex>& words,
         const Options& opt)
      : lm_(lm), actions_(actions), words_(words), opt_(opt), node_gc_at_(opt.gc_min_nodes),
        lm_gc_at_(opt.gc_min_nodes) {
    for (size_t c = 0; c < actions_.size(); ++c)
      if (actions_[c] == kBackspace) backspace_label_ = static_cast<int>(c);
    bool found;
    beam_map_.reset(1);
    beam_map_.find_or_insert(0, &found) = 0;
    nodes_.push_back({-1, -1, 0, -1, 0});
    LMNode root{-1, 0, 0.f, true, {}};
    if (lm_) root.state = lm_->bos_state();
    lm_nodes_.push_back(root);
    beam_.push_back({0, 0, 0, 0, -1, 0.0, kNegInf, 0.0});
  }

  // Weighted LM score + insertion bonus of appending `label` to LM context `parent`, and the new context.
  std::pair<int32_t, double> lm_step(int32_t parent, int label) {
    if (!lm_) return {0, 0.0};
    int act = actions_[label];
    if (act == kPass) return {parent, 0.0};
    if (act == kBackspace) {
      if (parent == 0) return {0, 0.0};
      const LMNode& p = lm_nodes_[parent];
      return {p.parent, -(opt_.lm_weight * p.score + opt_.insertion_bonus)};
    }
    uint32_t key = act == kScore ? static_cast<uint32_t>(words_[label]) + 1u : 0u;
    uint64_t ck = (static_cast<uint64_t>(parent) << 32) | key;
    const LMCache::Slot* hit = lm_cache_.find(ck);
    if (hit != nullptr) return {hit->child, opt_.lm_weight * hit->score + opt_.insertion_bonus};
    int32_t child;
    {
      LMNode n{parent, key, 0.f, false, {}};
      const LMNode& p = lm_nodes_[parent];
      if (act == kScore) {
        n.score = lm_->score(p.state, words_[label], &n.state);
      } else {  // boundary: end the sentence (or word) and start a new one
        if (p.bos) {
          n.score = lm_->unk_score();
        } else {
          lm::ngram::State ignored;
          n.score = lm_->score(p.state, lm_->eos(), &ignored);
        }
        n.state = lm_->bos_state();
        n.bos = true;
      }
      child = static_cast<int32_t>(lm_nodes_.size());
      lm_nodes_.push_back(n);
      lm_cache_.insert(ck, child, n.score);
      if (lm_cache_.size() > opt_.gc_min_nodes) trim_lm_cache();
    }
    return {child, opt_.lm_weight * lm_nodes_[child].score + opt_.insertion_bonus};
  }

  // Keep only the newest half of the LM-step cache, so that it stays small enough for the CPU's cache
  // on long inputs (the hypotheses extend recent nodes). A node dropped from it and asked for again
  // is scored again into a new node with the same state and score: the search's result is the same.
  void trim_lm_cache() {
    lm_cache_.clear();
    const size_t keep = opt_.gc_min_nodes / 2, n = lm_nodes_.size();
    for (size_t i = n - std::min(n - 1, keep); i < n; ++i) {
      const LMNode& node = lm_nodes_[i];
      lm_cache_.insert((static_cast<uint64_t>(node.parent) << 32) | node.key, static_cast<int32_t>(i), node.score);
    }
  }

  // Upper bound of lm_step's score for `label` after `h` (exact for backspace); +inf when unknown.
  double gain_bound(const Hyp& h, int label) const {
    if (!lm_) return 0.0;
    int act = actions_[label];
    if (act == kPass) return 0.0;
    if (act == kBackspace)
      return h.lm == 0 ? 0.0 : -(opt_.lm_weight * lm_nodes_[h.lm].score + opt_.insertion_bonus);
    return opt_.lm_weight >= 0 ? opt_.insertion_bonus : std::numeric_limits<double>::infinity();
  }

  void step(const float* row, int num_classes) {
    // Best first, ties by label: the order in which labels are tried (and cut off) below.
    auto better = [row](int a, int b) { return row[a] != row[b] ? row[a] > row[b] : a < b; };
    // Per-frame candidate labels: within label_threshold of the frame's best, at most max_labels.
    if (opt_.label_threshold <= 0 && (opt_.max_labels <= 0 || opt_.max_labels >= num_classes)) {
      is_cand_.assign(num_classes, 1);
    } else {
      float best = row[0];
      for (int c = 1; c < num_classes; ++c) best = std::max(best, row[c]);
      cands_.clear();
      for (int c = 0; c < num_classes; ++c)
        if (opt_.label_threshold <= 0 || row[c] >= best - opt_.label_threshold) cands_.push_back(c);
      if (opt_.max_labels > 0 && static_cast<int>(cands_.size()) > opt_.max_labels) {
        std::nth_element(cands_.begin(), cands_.begin() + opt_.max_labels, cands_.end(), better);
        cands_.resize(opt_.max_labels);
      }
      is_cand_.assign(num_classes, 0);
      for (int c : cands_) is_cand_[c] = 1;
    }
    const int blank = opt_.blank;

    entries_.clear();
    map_.reset(2 * beam_.size() + 16);  // grows when a frame has more entries
    auto entry = [&](uint64_t hash, bool* found) -> Entry& {
      int32_t& slot = map_.find_or_insert(hash, found);
      if (!*found) {
        slot = static_cast<int32_t>(entries_.size());
        entries_.push_back({hash, 0, -1, -1, -1, -1, -1, kNegInf, kNegInf, kNegInf, false});
      }
      return entries_[slot];
    };
    bool found;
    // Stay on the same prefix: a blank, or a repeat of the last label (collapsed by CTC).
    for (const Hyp& h : beam_) {
      bool stays = is_cand_[blank] || (h.last >= 0 && is_cand_[h.last]);
      if (!stays) continue;
      Entry& e = entry(h.hash, &found);
      e.node = h.node;
      e.lm = h.lm;
      e.last = h.last;
      e.parent_hash = h.parent_hash;
      if (is_cand_[blank]) e.b = log_add(e.b, h.total + row[blank]);
      if (h.last >= 0 && is_cand_[h.last]) e.nb = log_add(e.nb, h.nb + row[h.last]);
    }
    // Exact pruning: a new extension enters the beam only if it beats the beam_size-th best stay
    // and the best stay minus beam_threshold (stay scores only grow). Extensions that would merge
    // into a stay entry are never skipped (see the pass after the loop). The result is the same as
    // expanding every candidate; reference.py, which does, checks that.
    // `heap_` holds (lower bounds of) the beam_size best totals seen so far, a min-heap.
    heap_.clear();
    top_ = kNegInf;
    for (const Entry& e : entries_) admit(log_add(e.b, e.nb));
    const double regular_gain = std::max(0.0, lm_ ? (opt_.lm_weight >= 0 ? opt_.insertion_bonus
                                                                         : std::numeric_limits<double>::infinity())
                                                  : 0.0);
    const int bksp = backspace_label_;
    // The labels worth trying, best first: the loop below stops at the first label under
    // cutoff() - total - regular_gain, a bound that only rises from the one used here (cutoff()
    // grows, no total exceeds the best), so the labels under it are never tried and need no sort.
    double best_total = kNegInf;
    for (const Hyp& h : beam_) best_total = std::max(best_total, h.total);
    const double first_cut = cutoff() - best_total - regular_gain - 1e-9;
    cands_.clear();
    for (int c = 0; c < num_classes; ++c)
      if (c != blank && is_cand_[c] && !(row[c] < first_cut)) cands_.push_back(c);
    std::sort(cands_.begin(), cands_.end(), better);
    // Extend the prefix by a label (after a blank when it repeats the last one).
    for (size_t i = 0; i < beam_.size(); ++i) {
      const Hyp h = beam_[i];
      const double total = h.total;
      bool bksp_done = bksp < 0 || !is_cand_[bksp];
      for (int c : cands_) {
        // No later regular label can enter (the margin leaves near-ties to extend()'s exact test).
        if (row[c] < cutoff() - total - regular_gain - 1e-9) break;
        if (c == bksp) bksp_done = true;
        extend(h, total, c, row, true);
      }
      if (!bksp_done) extend(h, total, bksp, row, true);
    }
    // Merges skipped above: extensions whose prefix is already a stay entry.
    for (const Hyp& g : beam_) {
      if (g.last < 0 || !is_cand_[g.last]) continue;
      int32_t* ei = map_.find(g.hash);
      if (ei == nullptr || entries_[*ei].extended) continue;
      int32_t* hi = beam_map_.find(g.parent_hash);
      if (hi == nullptr) continue;
      const Hyp& h = beam_[*hi];
      extend(h, h.total, g.last, row, false);
    }
    prune();
    ++frame_;
  }

  // Adds the extension of `h` by `label` unless it provably cannot enter the beam: a new prefix gets
  // no other contribution this frame, so its score is final and is dropped when under cutoff(),
  // first by a bound before the LM is asked, then exactly. A merge into a stay entry is always added.
  void extend(const Hyp& h, double total, int c, const float* row, bool may_skip) {
    double from = c == h.last ? h.b : total;
    if (from == kNegInf) return;
    uint64_t hash = extend_hash(h.hash, static_cast<uint64_t>(c));
    int32_t* ei = map_.find(hash);
    if (ei == nullptr && may_skip && from + row[c] + gain_bound(h, c) < cutoff()) return;
    std::pair<int32_t, double> step = lm_step(h.lm, c);
    const double score = from + row[c] + step.second;
    if (ei != nullptr) {
      Entry& e = entries_[*ei];
      e.nb = log_add(e.nb, score);
      e.extended = true;
      return;
    }
    if (may_skip && score < cutoff()) return;
    map_.insert(hash, static_cast<int32_t>(entries_.size()));
    entries_.push_back({hash, h.hash, -1, h.node, c, step.first, c, kNegInf, score, kNegInf, true});
    admit(score);
  }

  // Record a lower bound of one entry's final total (each entry at most once).
  void admit(double total) {
    top_ = std::max(top_, total);
    if (heap_.size() < static_cast<size_t>(opt_.beam_size)) {
      heap_.push_back(total);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<double>());
    } else if (total > heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<double>());
      heap_.back() = total;
      std::push_heap(heap_.begin(), heap_.end(), std::greater<double>());
    }
  }

  // Totals below this cannot be in the next beam: under the beam_size-th best lower bound, or more
  // than beam_threshold under the best.
  double cutoff() const {
    double c = opt_.beam_threshold > 0 ? top_ - opt_.beam_threshold : kNegInf;
    if (heap_.size() == static_cast<size_t>(opt_.beam_size)) c = std::max(c, heap_.front());
    return c;
  }

  void prune() {
    double best = kNegInf;
    for (Entry& e : entries_) {
      e.total = log_add(e.b, e.nb);
      best = std::max(best, e.total);
    }
    order_.clear();
    for (size_t i = 0; i < entries_.size(); ++i) {
      double t = entries_[i].total;
      if (t == kNegInf) continue;
      if (opt_.beam_threshold > 0 && t < best - opt_.beam_threshold) continue;
      order_.push_back(static_cast<int32_t>(i));
    }
    auto better = [this](int32_t a, int32_t b) {
      const Entry &x = entries_[a], &y = entries_[b];
      return x.total != y.total ? x.total > y.total : x.hash < y.hash;
    };
    size_t keep = std::min(order_.size(), static_cast<size_t>(opt_.beam_size));
    if (keep < order_.size()) std::nth_element(order_.begin(), order_.begin() + keep, order_.end(), better);
    std::sort(order_.begin(), order_.begin() + keep, better);
    beam_.clear();
    for (size_t k = 0; k < keep; ++k) {
      Entry& e = entries_[order_[k]];
      if (e.node < 0) {
        e.node = static_cast<int32_t>(nodes_.size());
        nodes_.push_back({e.parent, e.label, nodes_[e.parent].depth + 1, frame_, e.hash});
      }
      beam_.push_back({e.hash, e.parent_hash, e.node, e.lm, e.last, e.b, e.nb, e.total});
    }
    beam_map_.reset(beam_.size());
    bool found;
    for (size_t k = 0; k < beam_.size(); ++k) beam_map_.find_or_insert(beam_[k].hash, &found) = static_cast<int32_t>(k);
    if (nodes_.size() > node_gc_at_ || lm_nodes_.size() > lm_gc_at_) collect();
  }

  // Mark-and-compact both tries from the live beam (parents always precede children).
  void collect() {
    std::vector<int32_t> remap(nodes_.size(), -1);
    std::vector<char> live(nodes_.size(), 0);
    live[0] = 1;
    for (const Hyp& h : beam_)
      for (int32_t n = h.node; n >= 0 && !live[n]; n = nodes_[n].parent) live[n] = 1;
    int32_t k = 0;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!live[i]) continue;
      remap[i] = k;
      TrieNode n = nodes_[i];
      n.parent = n.parent >= 0 ? remap[n.parent] : -1;
      nodes_[k++] = n;
    }
    nodes_.resize(k);
    for (Hyp& h : beam_) h.node = remap[h.node];
    node_gc_at_ = std::max(opt_.gc_min_nodes, 2 * nodes_.size());

    std::vector<int32_t> lm_remap(lm_nodes_.size(), -1);
    std::vector<char> lm_live(lm_nodes_.size(), 0);
    lm_live[0] = 1;
    for (const Hyp& h : beam_)
      for (int32_t n = h.lm; n >= 0 && !lm_live[n]; n = lm_nodes_[n].parent) lm_live[n] = 1;
    k = 0;
    for (size_t i = 0; i < lm_nodes_.size(); ++i) {
      if (!lm_live[i]) continue;
      lm_remap[i] = k;
      LMNode n = lm_nodes_[i];
      if (n.parent >= 0) n.parent = lm_remap[n.parent];
      lm_nodes_[k++] = n;
    }
    lm_nodes_.resize(k);
    trim_lm_cache();
    for (Hyp& h : beam_) h.lm = lm_remap[h.lm];
    lm_gc_at_ = std::max(opt_.gc_min_nodes, 2 * lm_nodes_.size());
  }

  // Final scores (end-of-sentence LM score added where a sentence is open), best first.
  Result finish(int n) {
    std::vector<std::pair<double, size_t>> ranked;
    for (size_t i = 0; i < beam_.size(); ++i) {
      double s = beam_[i].total;
      if (lm_ && !lm_nodes_[beam_[i].lm].bos) {
        lm::ngram::State ignored;
        s += opt_.lm_weight * lm_->score(lm_nodes_[beam_[i].lm].state, lm_->eos(), &ignored);
      }
      ranked.push_back({s, i});
    }
    std::sort(ranked.begin(), ranked.end(), [this](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : beam_[a.second].hash < beam_[b.second].hash;
    });
    Result r;
    if (ranked.empty()) {  // every path had probability 0 (e.g. a frame of -inf log-probs)
      r.labels.push_back({});
      r.scores.push_back(kNegInf);
      return r;
    }
    for (size_t j = 0; j < ranked.size() && static_cast<int>(j) < n; ++j) {
      std::vector<int> labels;
      for (int32_t node = beam_[ranked[j].second].node; node > 0; node = nodes_[node].parent)
        labels.push_back(nodes_[node].label);
      std::reverse(labels.begin(), labels.end());
      r.labels.push_back(std::move(labels));
      r.scores.push_back(ranked[j].first);
    }
    return r;
  }

  // LM contribution of a whole label sequence, exactly as the search accumulates it.
  double score_labels(const std::vector<int>& labels, bool eos) {
    int32_t node = 0;
    double total = 0.0;
    for (int c : labels) {
      std::pair<int32_t, double> s = lm_step(node, c);
      node = s.first;
      total += s.second;
    }
    if (eos && lm_ && !lm_nodes_[node].bos) {
      lm::ngram::State ignored;
      total += opt_.lm_weight * lm_->score(lm_nodes_[node].state, lm_->eos(), &ignored);
    }
    return total;
  }

  // ---- streaming (incremental decoding): read the beam's label trie, restrict the beam to a prefix.
  int64_t frames() const { return frame_; }
  bool empty() const { return beam_.empty(); }
  const TrieNode& node(int32_t n) const { return nodes_[n]; }
  int32_t best_node() const { return beam_.front().node; }  // beam_ is sorted best first

  int32_t ancestor(int32_t n, int32_t depth) const {
    while (nodes_[n].depth > depth) n = nodes_[n].parent;
    return n;
  }

  // The deepest prefix shared by every hypothesis of the beam (the root when they share none).
  int32_t common_node() const {
    int32_t depth = std::numeric_limits<int32_t>::max();
    for (const Hyp& h : beam_) depth = std::min(depth, nodes_[h.node].depth);
    std::vector<int32_t> at;
    for (const Hyp& h : beam_) at.push_back(ancestor(h.node, depth));
    for (;;) {
      bool same = true;
      for (int32_t n : at) same = same && nodes_[n].hash == nodes_[at[0]].hash;
      if (same || depth == 0) return at[0];
      --depth;
      for (int32_t& n : at) n = nodes_[n].parent;
    }
  }

  // The deepest ancestor of `n` (or `n`) that entered the beam at or before frame `frame`.
  int32_t entered_by(int32_t n, int64_t frame) const {
    while (n > 0 && nodes_[n].frame > frame) n = nodes_[n].parent;
    return n;
  }

  // Labels of node `n`'s prefix after its first `from_depth` labels.
  std::vector<int> labels_after(int32_t n, int32_t from_depth) const {
    std::vector<int> out;
    for (; nodes_[n].depth > from_depth; n = nodes_[n].parent) out.push_back(nodes_[n].label);
    std::reverse(out.begin(), out.end());
    return out;
  }

  // Drop the hypotheses that do not start with the prefix of node `n` (keeps the beam's order).
  void restrict_to(int32_t n) {
    const int32_t depth = nodes_[n].depth;
    const uint64_t hash = nodes_[n].hash;
    std::vector<Hyp> kept;
    for (const Hyp& h : beam_)
      if (nodes_[h.node].depth >= depth && nodes_[ancestor(h.node, depth)].hash == hash) kept.push_back(h);
    beam_.swap(kept);
    beam_map_.reset(beam_.size());
    bool found;
    for (size_t k = 0; k < beam_.size(); ++k) beam_map_.find_or_insert(beam_[k].hash, &found) = static_cast<int32_t>(k);
  }

 private:
  const LanguageModel* lm_;
  const std::vector<int>& actions_;
  const std::vector<lm::WordIndex>& words_;
  Options opt_;
  std::vector<TrieNode> nodes_;  // label trie
  std::vector<LMNode> lm_nodes_;
  LMCache lm_cache_;
  std::vector<Hyp> beam_;
  std::vector<Entry> entries_;
  std::vector<int32_t> order_;
  std::vector<int> cands_;
  std::vector<char> is_cand_;
  FrameMap map_, beam_map_;
  std::vector<double> heap_;
  double top_ = kNegInf;
  int backspace_label_ = -1;
  size_t node_gc_at_, lm_gc_at_;
  int64_t frame_ = 0;
};

}  // namespace emgscale_beam
