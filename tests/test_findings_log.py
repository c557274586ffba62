"""`FindingLog.save`: findings of every log sharing a file kept, no needless writes."""

import json
import os

from trainwatch.findings import Finding, FindingLog, load_findings


def finding(code):
    return Finding(code, "warning", f"{code} seen.", "Do something.", step=1)


def test_logs_sharing_a_file_keep_each_others_findings(tmp_path):
    path = str(tmp_path / "findings.json")
    first, second = FindingLog(path), FindingLog(path)
    first.add(finding("loss_plateau"))
    second.add(finding("update_ratio_low"))
    first.add(finding("overfitting"))
    codes = [f.code for f in load_findings(path)]
    assert sorted(codes) == ["loss_plateau", "overfitting", "update_ratio_low"]


def test_a_save_that_changes_nothing_leaves_the_file_alone(tmp_path):
    path = str(tmp_path / "findings.json")
    first, second = FindingLog(path), FindingLog(path)
    first.save()  # a clean run: an empty list
    second.save()
    inode = os.stat(path).st_ino
    first.save()
    second.save()  # nothing new: no rewrite (a rewrite replaces the file)
    assert os.stat(path).st_ino == inode
    second.add(finding("loss_nan"))
    assert os.stat(path).st_ino != inode
    assert [f.code for f in load_findings(path)] == ["loss_nan"]


def test_an_unreadable_file_is_replaced(tmp_path):
    path = tmp_path / "findings.json"
    path.write_text("{not json")
    FindingLog(str(path)).save()
    assert json.loads(path.read_text()) == {"findings": []}
