"""The results CSV as OpenAI's: one row per logged step, train and eval logs merged."""

from trainer_service.job_store import Event
from trainer_service.results import results_csv


def event(**metrics) -> Event:
    return Event(0, "ftjob-x", 0.0, "info", "m", metrics or None)


def test_one_row_per_step_with_empty_cells_where_nothing_was_logged():
    events = [
        event(),  # a message
        event(step=1, loss=2.5, mean_token_accuracy=0.25),
        event(step=2, loss=2.0),
        event(step=2, eval_loss=2.2),  # the Trainer logs eval apart
    ]
    assert results_csv(events).decode().splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.5,0.25,,",
        "2,2.0,,2.2,",
    ]
