import json

import numpy as np

from vigil.detection.baseline import Scores
from vigil.detection.episodes import Episode
from vigil.pipeline.frames import json_values, to_annotation_frames, to_dataframes, to_rows
from vigil.pipeline.core import DetectionResult, ScoredSeries


def scored(labels, values, flags, score=None, name="s"):
    t = np.arange(len(values), dtype=np.int64) * 60_000 + 1_767_225_600_000
    v = np.array(values, float)
    s = np.array(score if score is not None else [0.1] * len(values), float)
    scores = Scores(s, v * 0 + 1, v * 0, v * 0 + 2)
    eps = [Episode(int(t[1]), None, int(t[1]), 3.0, 9.0, 1.0, 0.0, 2.0, "9 is far above 1")] if any(flags) else []
    return ScoredSeries(labels, t, v, scores, np.array(flags, np.int8), eps, "iforest", "percentunit", name)


def test_json_values_turn_nan_and_inf_into_null():
    assert json_values(np.array([1.0, np.nan, np.inf, -np.inf, 2.5])) == [1.0, None, None, None, 2.5]
    json.dumps(json_values(np.array([np.nan])), allow_nan=False)  # valid JSON for Grafana


def test_notices_travel_even_without_series():
    frames = to_dataframes(DetectionResult([], ["step raised to 2m"]), "A")
    assert frames == [{"refId": "A", "fields": [], "meta": {"notices": [{"severity": "warning",
                                                                         "text": "step raised to 2m"}]}}]


def test_dataframe_units_and_anomaly_points():
    s = scored({"instance": "a"}, [1.0, 9.0, 1.0], [0, 1, 0], name="a")
    frame = to_dataframes(DetectionResult([s]), "A")[0]
    fields = {f["name"]: f for f in frame["fields"]}
    assert fields["value"]["config"]["unit"] == "percentunit"
    assert fields["anomaly"]["values"] == [None, 9.0, None]
    assert frame["meta"]["custom"] == {"model": "iforest", "episodes": 1}


def test_open_episode_annotation_ends_at_the_last_point_and_says_ongoing():
    s = scored({"instance": "a"}, [1.0, 9.0, 9.0], [0, 1, 1], name="a")
    frame = to_annotation_frames(DetectionResult([s]), "A", tags=["cpu"])[0]
    f = {x["name"]: x["values"] for x in frame["fields"]}
    assert f["timeEnd"] == [int(s.times_ms[-1])]
    assert f["title"] == ["Anomaly: a (ongoing)"]
    assert f["tags"] == [["anomaly", "cpu", "instance:a"]]


def test_rows_rename_labels_that_collide_with_row_keys():
    s = scored({"__name__": "m", "value": "x", "instance": "a"}, [1.0, 2.0], [0, 0])
    rows = to_rows(DetectionResult([s]))
    assert rows[0]["label_value"] == "x" and rows[0]["value"] == 1.0
    assert rows[0]["series"] == "instance=a,value=x"
    latest = to_rows(DetectionResult([s]), latest=True)
    assert len(latest) == 1 and latest[0]["value"] == 2.0
