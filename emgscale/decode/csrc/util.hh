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

// Open-addressing map hash -> entry index, cleared per frame by bumping a generation counter.
class FrameMap {
 public:
  void reset(size_t expected) {
    size_t need = 16;
    while (need < 4 * expected) need <<= 1;
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
  }
  int32_t* find(uint64_t key) {
    size_t mask = keys_.size() - 1, i = static_cast<size_t>(key) & mask;
    while (gens_[i] == gen_) {
      if (keys_[i] == key) return &vals_[i];
      i = (i + 1) & mask;
    }
    return nullptr;
  }
  // Returns a reference to the slot value; `found` says whether the key was present.
  int32_t& find_or_insert(uint64_t key, bool* found) {
    size_t mask = keys_.size() - 1, i = static_cast<size_t>(key) & mask;
    while (gens_[i] == gen_) {
      if (keys_[i] == key) {
        *found = true;
        return vals_[i];
      }
      i = (i + 1) & mask;
    }
    gens_[i] = gen_;
    keys_[i] = key;
    *found = false;
    return vals_[i];
  }

 private:
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  std::vector<uint32_t> gens_;
  uint32_t gen_ = 0;
};

// Growable open-addressing map uint64 -> int32 (values >= 0), for the LM-step cache.
class U64Map {
 public:
  U64Map() { rehash(1 << 12); }
  int32_t find(uint64_t key) const {
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (vals_[i] < 0) return -1;
      if (keys_[i] == key) return vals_[i];
    }
  }
  void insert(uint64_t key, int32_t val) {
    if (2 * (size_ + 1) > keys_.size()) rehash(keys_.size() * 2);
    size_t i = slot(key);
    while (vals_[i] >= 0 && keys_[i] != key) i = (i + 1) & mask_;
    if (vals_[i] < 0) ++size_;
    keys_[i] = key;
    vals_[i] = val;
  }
  void clear() {
    std::fill(vals_.begin(), vals_.end(), -1);
    size_ = 0;
  }

 private:
  size_t slot(uint64_t key) const { return static_cast<size_t>(extend_hash(key, 0)) & mask_; }
  void rehash(size_t n) {
    std::vector<uint64_t> keys(std::move(keys_));
    std::vector<int32_t> vals(std::move(vals_));
    keys_.assign(n, 0);
    vals_.assign(n, -1);
    mask_ = n - 1;
    size_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (vals[i] >= 0) insert(keys[i], vals[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  size_t mask_ = 0, size_ = 0;
};

}  // namespace emgscale_beam
