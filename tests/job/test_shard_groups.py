"""Grouping shards into read tasks."""

from __future__ import annotations

from mmr5_batch.job.shard_groups import group_shards


def test_small_shards_share_a_task_up_to_the_count_and_byte_limits():
    items = list(range(10))
    assert group_shards(items, [1] * 10, max_bytes=100, max_shards=4, min_groups=1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert group_shards(items, [30] * 10, max_bytes=100, max_shards=64, min_groups=1) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_big_shard_goes_alone_and_order_is_kept():
    assert group_shards(["a", "big", "b", "c"], [1, 500, 1, 1], max_bytes=100, max_shards=64, min_groups=1) == [["a"], ["big"], ["b", "c"]]


def test_never_fewer_groups_than_asked_when_there_are_shards_enough():
    assert len(group_shards(list(range(10)), [1] * 10, max_bytes=1 << 30, max_shards=64, min_groups=4)) == 4
    assert group_shards([1, 2], [1, 1], max_bytes=1 << 30, max_shards=64, min_groups=8) == [[1], [2]]
    assert group_shards([], [], 1, 1, 1) == []


def test_a_plan_runs_in_waves_of_whole_shards_by_pending_queries():
    from mmr5_batch.job.planner import InputPlan, ShardPlan

    shards = [ShardPlan(f"p{n}", f"u{n}", f"k{n}", "f", pending=pending) for n, pending in enumerate([3, 3, 0, 10, 2, 2])]
    plan = InputPlan("root", "grouped", shards, [], [], {})
    waves = plan.waves(6)
    assert [[shard.key for shard in wave.to_run] for wave in waves] == [["k0", "k1", "k2"], ["k3"], ["k4", "k5"]]
    assert all(wave.layout == plan.layout and wave.skipped is plan.skipped for wave in waves)
    assert plan.waves(None) == [plan]
