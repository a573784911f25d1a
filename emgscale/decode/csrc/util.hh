// Small helpers of the native decoder: log-add, the prefix hash, and two open-addressing maps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace emgscale_beam {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// What a label does to the LM context (codes shared with emgscale/decode/reference.py).
enum Action : int { kScore = 0, kBoundary = 1, kBackspace = 2, kPass = 3, kBlank = 4 };

inline double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  return a > b ? a + std::log1p(std::exp(b - a)) : b + std::log1p(std::exp(a - b));
}

// Hash of a label prefix extended by one label (the same function as reference.py's _extend_hash).
inline uint64_t extend_hash(uint64_t h, uint64_t label) {
  uint64_t z = h ^ (label + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Open-addressing map hash -> entry index, cleared per frame by bumping a generation counter. It is
// sized for what a frame usually holds (small enough to stay in cache) and doubles when it fills.
class FrameMap {
 public:
  void reset(size_t expected) {
    size_t need = 16;
    while (need < 2 * expected) need <<= 1;
    if (need > keys_.size()) {
      keys_.assign(need, 0);
      vals_.assign(need, 0);
      gens_.assign(need, 0);
      gen_ = 0;
    }
    if (++gen_ == 0) {  // wrapped: clear for real
      std::fill(gens_.begin(), gens_.end(), 0);
      gen_ = 1;
    }
    size_ = 0;
  }
  int32_t* find(uint64_t key) {
    size_t mask = keys_.size() - 1, i = static_cast<size_t>(key) & mask;
    while (gens_[i] == gen_) {
      if (keys_[i] == key) return &vals_[i];
      i = (i + 1) & mask;
    }
    return nullptr;
  }
  // Adds a key that is not in the map.
  void insert(uint64_t key, int32_t val) {
    if (2 * (size_ + 1) > keys_.size()) grow();
    size_t mask = keys_.size() - 1, i = static_cast<size_t>(key) & mask;
    while (gens_[i] == gen_) i = (i + 1) & mask;
    gens_[i] = gen_;
    keys_[i] = key;
    vals_[i] = val;
    ++size_;
  }
  // Returns a reference to the slot value (valid until the next insertion); `found` says whether
  // the key was present.
  int32_t& find_or_insert(uint64_t key, bool* found) {
    int32_t* v = find(key);
    *found = v != nullptr;
    if (v != nullptr) return *v;
    insert(key, 0);
    return *find(key);
  }

 private:
  void grow() {
    std::vector<uint64_t> keys(std::move(keys_));
    std::vector<int32_t> vals(std::move(vals_));
    std::vector<uint32_t> gens(std::move(gens_));
    const uint32_t gen = gen_;
    keys_.assign(2 * keys.size(), 0);
    vals_.assign(2 * keys.size(), 0);
    gens_.assign(2 * keys.size(), 0);
    gen_ = 1;
    size_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (gens[i] == gen) insert(keys[i], vals[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  std::vector<uint32_t> gens_;
  uint32_t gen_ = 0;
  size_t size_ = 0;
};

// Growable open-addressing map (parent LM node, token) -> (child LM node, its log10 score), the
// LM-step cache; one slot holds all a lookup needs, so a hit touches one cache line.
class LMCache {
 public:
  struct Slot {
    uint64_t key;
    int32_t child;  // -1: empty
    float score;
  };
  LMCache() { rehash(1 << 10); }
  const Slot* find(uint64_t key) const {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].child < 0) return nullptr;
      if (slots_[i].key == key) return &slots_[i];
    }
  }
  void insert(uint64_t key, int32_t child, float score) {
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.size() * 2);
    size_t i = slot(key);
    while (slots_[i].child >= 0 && slots_[i].key != key) i = (i + 1) & mask_;
    if (slots_[i].child < 0) ++size_;
    slots_[i] = {key, child, score};
  }
  void clear() {
    for (Slot& s : slots_) s.child = -1;
    size_ = 0;
  }
  size_t size() const { return size_; }

 private:
  size_t slot(uint64_t key) const { return static_cast<size_t>(extend_hash(key, 0)) & mask_; }
  void rehash(size_t n) {
    std::vector<Slot> old(std::move(slots_));
    slots_.assign(n, Slot{0, -1, 0.f});
    mask_ = n - 1;
    size_ = 0;
    for (const Slot& s : old)
      if (s.child >= 0) insert(s.key, s.child, s.score);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, size_ = 0;
};

}  // namespace emgscale_beam
