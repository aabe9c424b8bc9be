import numpy as np

from vigil.pipeline.model_cache import ModelCache, approx_nbytes


class Model:
    def __init__(self, n):
        self.weights_ = np.zeros(n)  # n * 8 bytes


def test_size_of_a_model_is_the_arrays_it_holds():
    assert approx_nbytes(Model(1000)) == 8000
    assert approx_nbytes({"a": Model(10), "b": [np.zeros(5)]}) == 120


def test_cache_is_bounded_by_memory_and_evicts_least_recently_used():
    cache = ModelCache(max_entries=100, max_bytes=20_000)
    for key in "abc":
        cache.put(key, Model(1000))  # 8 KB each: only two fit
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is not None
    assert cache.nbytes == 16_000
    cache.get("b")  # b is now the most recent: d evicts c
    cache.put("d", Model(1000))
    assert cache.get("c") is None and cache.get("b") is not None


def test_replacing_and_discarding_keep_the_byte_count_right():
    cache = ModelCache(max_entries=10, max_bytes=10**6)
    cache.put("a", Model(100))
    cache.put("a", Model(200))
    assert cache.nbytes == 1600 and len(cache) == 1
    cache.discard("a")
    assert cache.nbytes == 0 and len(cache) == 0


def test_the_worker_keeps_its_own_larger_cache():
    # An empty ModelCache is falsy (it has a length): ``cache or default`` once swapped the
    # worker's 768 MiB cache for the service's 192 MiB one, and past ~500 series every warm run
    # refitted the models that had been evicted (600 series: 22 s a run instead of 1.3 s).
    from vigil.config import Settings
    from vigil.worker.runner import _make_detection

    settings = Settings().replace(prometheus={"url": "http://127.0.0.1:9"}, worker={"cache_max_mb": 900})
    detection = _make_detection(settings)
    assert detection.cache.max_bytes == 900 * 2**20
    assert detection.cache.max_bytes != settings.detection.cache_max_mb * 2**20
