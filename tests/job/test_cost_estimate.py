"""`plan`: input checks and the cost table, without Ray or a model."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from mmr5_batch.cli.main import main
from mmr5_batch.core.cost_model import H200, WindowCost, gpu_seconds
from mmr5_batch.core.rows import GROUPED_INPUT_SCHEMA


def test_cost_model_grows_with_prompt_and_answer():
    small = gpu_seconds(WindowCost(prompt_tokens=1500, image_tokens=1200, generated_tokens=400), H200)
    assert gpu_seconds(WindowCost(14000, 13860, 400), H200) > 5 * small > 0
    assert gpu_seconds(WindowCost(1500, 1200, 2000), H200) > small


def test_plan_reports_bad_shards_and_prices_ours_against_the_reference(ray_session, tmp_path, make_grey_jpeg, capsys):
    page = make_grey_jpeg(120, (1240, 1754))  # A4 at 150 dpi
    rows = [
        {"query_id": f"q{i}", "query": "which?", "candidates": [{"doc_id": f"d{j}", "image": page, "score": 1 - j / 10} for j in range(5)]} for i in range(4)
    ]
    rows.append({"query_id": "q0", "query": "again", "candidates": rows[0]["candidates"]})
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=GROUPED_INPUT_SCHEMA), tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.parquet").write_bytes(b"junk")
    assert main(["plan", "--input", str(tmp_path / "in"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"]["bad"] == 1 and "b.parquet: cannot read as Parquet" in next(iter(report["bad_shards"].values()))
    assert report["queries"] == 5 and report["planner_dead_letters"] == 2 and report["candidates_per_query"] == 5
    ours, same_model, two_models, reference = report["settings"]
    assert same_model["setting"].endswith("then top 5") and "two-model cascade: Qwen/Qwen3-VL-Reranker-2B" in two_models["setting"]
    # Five candidates: the same-model cascade has no first pass; the two-model one judges all five, then one MM-R5 window.
    assert same_model["windows_per_query"] == ours["windows_per_query"] == 1 and two_models["scored_per_query"] == 5
    assert reference["image_tokens_per_query"] == 5 * 2772
    assert reference["image_tokens_per_query"] >= 4 * ours["image_tokens_per_query"]
    assert ours["gpu_seconds_per_query"] < reference["gpu_seconds_per_query"]
    assert main(["plan", "--input", str(tmp_path / "in")]) == 0
    assert "| MM-R5 reference: pages near native size |" in capsys.readouterr().out


def test_on_long_lists_the_two_model_cascade_costs_a_fraction_of_sliding_windows():
    from mmr5_batch.config import RerankerConfig, config_from_keywords
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.job.cost_estimate import SettingCost, alternatives, price_setting

    run = resolve_run(config_from_keywords(RerankerConfig))
    costs = {}
    for option in alternatives(run):
        cascade = option.config.cascade
        cost = SettingCost(cascade.first_pass if cascade.enabled else "windows")
        price_setting(cost, option, [(1240, 1754)] * 50, generated=400)
        costs[cost.name] = cost.row(1)
    # 50 candidates, window 5 stride 3: 16 windows; same-model cascade: 8 windows of 10 small images, then one detail window.
    assert costs["windows"]["windows_per_query"] == 16 and costs["pointwise"]["windows_per_query"] == 1
    assert costs["pointwise"]["scored_per_query"] == 50 and costs["same-model"]["windows_per_query"] == 8 + 1
    assert costs["pointwise"]["gpu_seconds_per_query"] < costs["same-model"]["gpu_seconds_per_query"] < costs["windows"]["gpu_seconds_per_query"]


def test_a_text_scorer_is_priced_by_its_text_and_its_own_size():
    """The text Qwen3-Reranker sees no image: its prefills hold no image tokens and it is priced by its own (small,
    vision-less) size, so as the cascade's first pass it costs less than Qwen3-VL-Reranker-2B at the same budget."""
    from mmr5_batch.config import RerankerConfig, config_from_keywords
    from mmr5_batch.config.run import resolve_run
    from mmr5_batch.core.cost_model import QWEN3_RERANKER_SIZES, scorer_size
    from mmr5_batch.core.families import QWEN3_RERANKER
    from mmr5_batch.job.cost_estimate import SettingCost, _setting_label, price_setting

    assert scorer_size("Qwen/Qwen3-Reranker-4B", QWEN3_RERANKER) is QWEN3_RERANKER_SIZES["4b"]
    assert scorer_size("Qwen/Qwen3-Reranker-0.6B", QWEN3_RERANKER) is QWEN3_RERANKER_SIZES["0.6b"]
    cascade = {"cascade": True, "cascade.first_pass": "pointwise"}
    rows = {}
    for scorer in ("Qwen/Qwen3-VL-Reranker-2B", "Qwen/Qwen3-Reranker-0.6B"):
        run = resolve_run(config_from_keywords(RerankerConfig, **cascade, **{"scorer.name": scorer}))
        cost = SettingCost(_setting_label(run))
        price_setting(cost, run, [(1240, 1754)] * 50, generated=400)
        rows[scorer] = cost.row(1)
    text, vision = rows["Qwen/Qwen3-Reranker-0.6B"], rows["Qwen/Qwen3-VL-Reranker-2B"]
    assert text["scored_per_query"] == vision["scored_per_query"] == 50 and text["windows_per_query"] == 1
    assert text["gpu_seconds_per_query"] < vision["gpu_seconds_per_query"] and text["image_tokens_per_query"] < vision["image_tokens_per_query"]
    text_only = resolve_run(config_from_keywords(RerankerConfig, **{"model.name": "Qwen/Qwen3-Reranker-0.6B"}))
    cost = SettingCost(_setting_label(text_only))
    price_setting(cost, text_only, [(1240, 1754)] * 20, generated=400)
    assert cost.name == "pointwise Qwen/Qwen3-Reranker-0.6B: text only, one prompt per candidate"
    assert cost.row(1)["image_tokens_per_query"] == 0 and cost.row(1)["scored_per_query"] == 20
