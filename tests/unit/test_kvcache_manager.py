from inferflux.kvcache.manager import KVCacheManager, Placement


def test_prefix_reuse_prefers_cached_holder_then_copies_from_running() -> None:
    kv = KVCacheManager(n_slots=3, cells_per_slot=100)
    system = [1, 2, 3, 4, 5]
    a = kv.place(system + [10])
    assert a == Placement(0, 0)
    kv.prompt_resident(0, system + [10])
    # a second request shares the system prompt with a running sequence: copy from it
    b = kv.place(system + [20])
    assert b == Placement(1, 5, copy_from=0)
    kv.prompt_resident(1, system + [20])
    # the first finishes and is cached; a third request reuses that slot without a copy
    kv.release(0, system + [10, 11, 12])
    c = kv.place(system + [10, 11, 99])
    assert c == Placement(0, 7)
    # 6 + 6 + 8 prompt tokens looked up; 5 + 7 of them reused
    assert kv.stats().prefix_query_tokens == 20 and kv.stats().prefix_hit_tokens == 12


def test_no_slot_when_all_running_and_lru_eviction_of_cached() -> None:
    kv = KVCacheManager(n_slots=2, cells_per_slot=100)
    kv.place([1])
    kv.place([2])
    assert kv.place([3]) is None
    kv.release(0, [1, 1])
    kv.release(1, [2, 2])
    # slot 0 is least recently used: evicted for an unrelated prompt
    assert kv.place([9]) == Placement(0, 0)
    assert kv.tree.longest_match([1, 1]) == (0, set())
    assert kv.tree.longest_match([2, 2]) == (2, {1})


def test_prefix_cache_off_never_reuses() -> None:
    kv = KVCacheManager(n_slots=2, cells_per_slot=100, prefix_cache=False)
    kv.place([1, 2, 3])
    kv.prompt_resident(0, [1, 2, 3])
    assert kv.place([1, 2, 3, 4]) == Placement(1, 0)
    kv.release(0, [1, 2, 3])
    assert kv.state[0] == "free"


def test_a_burst_sharing_a_cached_prefix_reuses_it_for_every_request() -> None:
    kv = KVCacheManager(n_slots=4, cells_per_slot=100)
    system = list(range(50))
    kv.place(system + [1])
    kv.prompt_resident(0, system + [1])
    kv.release(0, system + [1, 2])
    placements = [kv.place(system + [100 + i]) for i in range(4)]
    # the first takes over the cached slot; the others copy the prefix from it at once,
    # before its prefill has finished
    assert placements[0] == Placement(0, 50)
    assert [p.n_cached for p in placements[1:]] == [50, 50, 50]
    assert all(p.copy_from >= 0 for p in placements[1:])
