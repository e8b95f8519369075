"""MetricsLogger() with no name: it finds its trial component at start, as a job's code expects.

A simulated training job: TRAINING_JOB_ARN in the environment, the job created in moto's
SageMaker server (which keeps ExperimentConfig and returns it from DescribeTrainingJob), and
the standard AWS_ENDPOINT_URL_SAGEMAKER variable pointing the Describe call there. The points
go to the in-memory client, which records the trial component of every request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from conftest import FakeClient

from metricsbuf import InvalidMetricError, MetricsLogger, TrialComponentNotFoundError
from metricsbuf._spool import Spool

ROLE = "arn:aws:iam::123456789012:role/sagemaker"


@pytest.fixture
async def in_a_training_job(
    aws_env: pytest.MonkeyPatch, moto_url: str
) -> AsyncIterator[tuple[pytest.MonkeyPatch, Any]]:
    """No job variables yet; the test creates its job and sets TRAINING_JOB_ARN."""
    for name in ("METRICSBUF_TRIAL_COMPONENT", "TRAINING_JOB_ARN", "TRANSFORM_JOB_ARN"):
        aws_env.delenv(name, raising=False)
    aws_env.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)
    aws_env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    async with get_session().create_client(
        "sagemaker", region_name="us-east-1", endpoint_url=moto_url
    ) as sagemaker:
        yield aws_env, sagemaker


async def start_training_job(sagemaker: Any, name: str, experiment_config: dict[str, str] | None) -> str:
    kwargs: dict[str, Any] = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": "image", "TrainingInputMode": "File"},
        "RoleArn": ROLE,
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    if experiment_config is not None:
        kwargs["ExperimentConfig"] = experiment_config
    return str((await sagemaker.create_training_job(**kwargs))["TrainingJobArn"])


@pytest.mark.parametrize(
    ("experiment_config", "expected", "source"),
    [
        ({"ExperimentName": "exp", "RunName": "exp-run-7"}, "exp-run-7", "ExperimentConfig.RunName"),
        (None, "zero-config-job-aws-training-job", "the job's own trial component"),
    ],
)
async def test_a_logger_with_no_name_finds_its_training_job_run(
    in_a_training_job: tuple[pytest.MonkeyPatch, Any],
    experiment_config: dict[str, str] | None,
    expected: str,
    source: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env, sagemaker = in_a_training_job
    job = "Zero-Config-Job" if experiment_config is None else "Job-With-Run"
    env.setenv("TRAINING_JOB_ARN", await start_training_job(sagemaker, job, experiment_config))
    client = FakeClient()
    caplog.set_level(logging.INFO, logger="metricsbuf")
    metrics = MetricsLogger(client=client)
    assert metrics.trial_component_name is None  # found at start
    async with metrics:
        await metrics.log("loss", 1.0, step=0)
    assert metrics.trial_component_name == expected
    assert metrics.trial_component_source is not None and source in metrics.trial_component_source
    assert set(client.trial_components) == {expected}
    assert f"logging to trial component {expected!r}" in caplog.text


async def test_the_environment_variable_names_it_for_operators(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("METRICSBUF_TRIAL_COMPONENT", "operator-run")
    client = FakeClient()
    async with MetricsLogger(client=client) as metrics:
        await metrics.log("loss", 1.0)
    assert (metrics.trial_component_name, metrics.trial_component_source) == (
        "operator-run",
        "environment:METRICSBUF_TRIAL_COMPONENT",
    )
    assert client.trial_components == ["operator-run"]


async def test_a_bad_name_from_the_environment_says_where_it_came_from(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("METRICSBUF_TRIAL_COMPONENT", "Not_A_Valid_Name")
    with pytest.raises(InvalidMetricError, match="METRICSBUF_TRIAL_COMPONENT"):
        async with MetricsLogger(client=FakeClient()):
            pass


async def test_no_name_anywhere_fails_at_start_and_holds_nothing(
    aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("METRICSBUF_TRIAL_COMPONENT", "TRAINING_JOB_ARN", "TRANSFORM_JOB_ARN"):
        aws_env.delenv(name, raising=False)
    metrics = MetricsLogger(client=FakeClient(), spool_dir=tmp_path)
    with pytest.raises(TrialComponentNotFoundError, match="Tried, in order"):
        await metrics.start()
    Spool.open(tmp_path).close()  # the spool folder is not locked


async def test_offline_never_asks_a_job_and_needs_a_name(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    aws_env.delenv("METRICSBUF_TRIAL_COMPONENT", raising=False)
    aws_env.setenv("TRAINING_JOB_ARN", "arn:aws:sagemaker:us-east-1:123456789012:training-job/some-job")
    with pytest.raises(TrialComponentNotFoundError, match="offline"):
        async with MetricsLogger(spool_dir=tmp_path, offline=True):
            pass
    aws_env.setenv("METRICSBUF_TRIAL_COMPONENT", "offline-run")
    async with MetricsLogger(spool_dir=tmp_path, offline=True) as metrics:
        await metrics.log("loss", 1.0)
    assert metrics.trial_component_name == "offline-run"
