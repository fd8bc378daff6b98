"""The core's partitioner agrees with aiokafka's (and so with Kafka's Java client)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from pipeline.partitioning import murmur2, partition_for, partition_hash


@given(st.binary(max_size=64))
def test_murmur2_equals_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


# Kafka's own vectors (clients/src/test/.../utils/UtilsTest.java, testMurmur2), as Java ints.
KAFKA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def test_murmur2_gives_kafkas_own_test_vectors() -> None:
    for text, java_int in KAFKA_MURMUR2.items():
        assert murmur2(text.encode()) == java_int & 0xFFFFFFFF, text
        assert partition_hash(text.encode()) == java_int & 0x7FFFFFFF


def test_partition_for_is_the_positive_hash_modulo_the_count() -> None:
    for key in (b"", b"device_id:d1", b"customer_id:c42", "\u00e9-\u00fc".encode()):
        for partitions in (1, 4, 12):
            expected = (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions
            assert partition_for(key, partitions) == expected
