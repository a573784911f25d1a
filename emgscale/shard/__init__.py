"""emg2qwerty sessions as WebDataset shards: planning, writing, manifest, verification, records.

``python -m emgscale.shard`` writes shards (:func:`shard_corpus`) and verifies them
(:func:`verify_shards`); :mod:`emgscale.loader` reads them back as batches.
"""

from emgscale.shard.build import shard_corpus
from emgscale.shard.manifest import Manifest, load_manifest
from emgscale.shard.plan import ShardConfig
from emgscale.shard.records import RecordSpec, decode_record, record_samples
from emgscale.shard.verify import VerifyReport, verify_shards

__all__ = ["Manifest", "RecordSpec", "ShardConfig", "VerifyReport", "decode_record", "load_manifest",
           "record_samples", "shard_corpus", "verify_shards"]
