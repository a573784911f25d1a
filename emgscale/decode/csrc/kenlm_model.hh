// The KenLM model behind the native decoder (KenLM's C++ API, any model type via LoadVirtual).
#pragma once

#include <memory>
#include <string>

#include "lm/model.hh"
#include "lm/virtual_interface.hh"

namespace emgscale_beam {

class LanguageModel {
 public:
  explicit LanguageModel(const std::string& path) {
    lm::ngram::Config config;
    config.messages = nullptr;
    model_.reset(lm::ngram::LoadVirtual(path.c_str(), config));
    model_->BeginSentenceWrite(&bos_);
    lm::ngram::State null_state, out;
    model_->NullContextWrite(&null_state);
    // Score of an out-of-vocabulary token in an empty context, as the reference decoder uses.
    unk_score_ = model_->BaseScore(&null_state, model_->BaseVocabulary().NotFound(), &out);
  }
  int order() const { return model_->Order(); }
  lm::WordIndex index(const std::string& word) const { return model_->BaseVocabulary().Index(word); }
  lm::WordIndex eos() const { return model_->BaseVocabulary().EndSentence(); }
  const lm::ngram::State& bos_state() const { return bos_; }
  float unk_score() const { return unk_score_; }
  float score(const lm::ngram::State& in, lm::WordIndex w, lm::ngram::State* out) const {
    return model_->BaseScore(&in, w, out);
  }

 private:
  std::unique_ptr<lm::base::Model> model_;
  lm::ngram::State bos_;
  float unk_score_ = 0.f;
};

}  // namespace emgscale_beam
