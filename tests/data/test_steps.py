import pytest

from mtpf.data.steps import MultiTaskStepDataset, TaskSchedule


def test_schedules():
    both = TaskSchedule(("ner", "tc"))  # the run's tasks, in registry order (mtpf.tasks.task_order)
    assert [both.tasks_at(s) for s in range(2)] == [("ner", "tc"), ("ner", "tc")]
    assert both.task_index("tc", 5) == 5
    alternate = TaskSchedule(("ner", "tc"), "alternate", "1:3")
    assert [alternate.tasks_at(s) for s in range(5)] == [("ner",), ("tc",), ("tc",), ("tc",), ("ner",)]
    assert [alternate.task_index("tc", s) for s in range(6)] == [0, 0, 1, 2, 3, 3]
    assert alternate.task_index("ner", 5) == 2
    with pytest.raises(ValueError, match="task_schedule"):
        TaskSchedule(("ner",), "random")
    with pytest.raises(ValueError, match=r"task_ratio='1': give one whole number per task of \['ner', 'tc'\]"):
        TaskSchedule(("ner", "tc"), "alternate", "1")


def test_step_dataset_needs_batches_for_each_task():
    with pytest.raises(ValueError, match=r"No batches for the task\(s\) \['tc'\]"):
        MultiTaskStepDataset(3, TaskSchedule(("ner", "tc")), {"ner": None})
