"""Kafka's default partitioner: the positive murmur2 hash of a record's key, modulo the
topic's partition count, exactly as the Java client, kafka-python and aiokafka compute it.

Here rather than aiokafka's pure-Python ``murmur2`` because every touchpoint asks which
partition its person's anchor identifier lives in, and every output is routed by its key: this
module is compiled with the engine (``make compile``), which makes the hash several times
cheaper. ``tests/unit/test_partitioning.py`` checks it against aiokafka's.
"""

from __future__ import annotations

from typing import Final

SEED: Final = 0x9747B28C
MULTIPLIER: Final = 0x5BD1E995
MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32 bits, unsigned) of ``data`` with Kafka's seed."""
    length = len(data)
    h = (SEED ^ length) & MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * MULTIPLIER) & MASK
        k ^= k >> 24
        k = (k * MULTIPLIER) & MASK
        h = ((h * MULTIPLIER) & MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h = ((h ^ data[end]) * MULTIPLIER) & MASK
    h ^= h >> 13
    h = (h * MULTIPLIER) & MASK
    return h ^ (h >> 15)


def partition_hash(key: bytes) -> int:
    """The partitioner's hash before the modulo (for a producer that learns the count later)."""
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed ``key``."""
    return partition_hash(key) % partitions
