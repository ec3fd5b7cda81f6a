from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.app import beat_schedule
from contract.messages import RetrainRequest
from contract.settings import Settings
from worker.model.layout import worker_concurrency


def test_env_prefix_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INBOX_CLASSIFIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INBOX_CLASSIFIER_BATCH_SIZE", "64")
    monkeypatch.setenv("INBOX_CLASSIFIER_WEIGHTS", "NONE")
    s = Settings()
    assert s.batch_size == 64 and s.weights == "none"
    assert s.db_url == f"sqlite:///{(tmp_path / 'results.db').resolve()}"
    assert s.labeled_path == tmp_path / "labeled" and s.models_path == tmp_path / "models"


def test_explicit_values_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOX_CLASSIFIER_MODEL", "resnet50")
    assert Settings(model="resnet18").model == "resnet18"


def test_round_trip_through_child_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Settings(data_dir=tmp_path, retrain_interval_s=None, batch_wait_ms=7)
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    child = Settings()
    assert child.retrain_interval_s is None and child.batch_wait_ms == 7
    assert child.data_dir == tmp_path.resolve()
    # Defaults stay defaults in the child: a training run there still picks its own recipe
    # where the person chose nothing (worker.training.recipe).
    assert child.model_fields_set == original.model_fields_set
    assert "train_optimizer" not in child.model_fields_set


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(batch_size=0)
    with pytest.raises(ValidationError):
        Settings(train_mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="requeue_after_s"):
        Settings(requeue_after_s=5, reconcile_interval_s=30)


def test_concurrency_holds_a_batch_per_stream_and_two_more() -> None:
    def concurrency(**kwargs: int) -> int:
        return worker_concurrency(Settings(**kwargs))  # type: ignore[arg-type]

    assert concurrency(batch_size=32, files_per_message=8, inference_streams=1) == 12
    assert concurrency(batch_size=32, files_per_message=8, inference_streams=2) == 16
    assert concurrency(batch_size=4, files_per_message=16, inference_streams=2) == 2
    assert concurrency(batch_size=16, files_per_message=16, worker_concurrency=7) == 7


def test_beat_schedule_interval_and_cron() -> None:
    assert "retrain" not in beat_schedule(Settings(retrain_interval_s=None))
    assert beat_schedule(Settings(retrain_interval_s=60))["retrain"]["args"] == [
        RetrainRequest(trigger="schedule").encode()
    ]
    cron = beat_schedule(Settings(retrain_cron="0 3 * * *"))["retrain"]["schedule"]
    assert "3" in str(cron)
    assert "reconcile" in beat_schedule(Settings())


def test_gpu_sizes_apply_only_where_the_user_set_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from contract.sizing import CUDA_DEFAULT, sized_for_cuda

    for name in ("BATCH_SIZE", "FILES_PER_MESSAGE", "MODEL"):
        monkeypatch.delenv(f"INBOX_CLASSIFIER_{name}", raising=False)
    plain = sized_for_cuda(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (plain.batch_size, plain.files_per_message) == (256, 64)
    big = sized_for_cuda(Settings(_env_file=None, model="resnet50"))  # type: ignore[call-arg]
    assert (big.batch_size, big.files_per_message) == (128, 32)
    other = sized_for_cuda(Settings(_env_file=None, model="vit_b_16"))  # type: ignore[call-arg]
    assert (other.batch_size, other.files_per_message) == CUDA_DEFAULT
    monkeypatch.setenv("INBOX_CLASSIFIER_BATCH_SIZE", "24")
    chosen = sized_for_cuda(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (chosen.batch_size, chosen.files_per_message) == (24, 64)
    flag = sized_for_cuda(Settings(_env_file=None).model_copy(update={"files_per_message": 8}))  # type: ignore[call-arg]
    assert flag.files_per_message == 8
    # A GPU worker holds enough messages for its larger batches.
    assert worker_concurrency(plain) * plain.files_per_message >= 2 * plain.batch_size


def test_workers_per_gpu_follow_the_cores_unless_set_and_share_the_decode_threads() -> None:
    from contract.sizing import sized_for_cuda, sized_for_machine, workers_per_gpu

    plain = Settings(_env_file=None)  # type: ignore[call-arg]
    assert workers_per_gpu(plain, gpus=1, cores=16) == 4
    assert workers_per_gpu(plain, gpus=2, cores=16) == 2
    assert workers_per_gpu(plain, gpus=1, cores=2) == 1  # never none
    assert workers_per_gpu(plain, gpus=1, cores=64) == 4  # capped
    pinned = Settings(_env_file=None, workers_per_gpu=3)  # type: ignore[call-arg]
    assert workers_per_gpu(pinned, gpus=1, cores=64) == 3
    # 16 cores, one GPU, 4 workers: 4 decode threads each; a value the user set stays.
    assert sized_for_cuda(plain, gpus=1, cores=16).decode_threads == 4
    assert sized_for_cuda(plain, gpus=2, cores=16).decode_threads == 4
    assert sized_for_cuda(plain.model_copy(update={"decode_threads": 7}), 1, 16).decode_threads == 7
    # The CPU keeps the CPU's sizes whatever GPUs there are; no GPU: no change either.
    cpu = Settings(_env_file=None, device="cpu")  # type: ignore[call-arg]
    assert sized_for_machine(cpu, ["0"]).batch_size == 16
    assert sized_for_machine(plain, []).batch_size == 16
    assert sized_for_machine(plain, ["0"]).batch_size == 256
