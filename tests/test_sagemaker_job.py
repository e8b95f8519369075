"""Finding the trial component without configuration inside SageMaker jobs.

The Describe calls go to moto's SageMaker server on 127.0.0.1: moto 5.x implements
DescribeTrainingJob, DescribeProcessingJob and DescribeTransformJob and returns the
ExperimentConfig given at creation for all three. Throttling, connection errors and AccessDenied
are paths moto never takes: those tests use ``StubSageMaker``, a stand-in client whose
``describe_training_job`` plays a scripted list of answers and errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, EndpointConnectionError

from metricsbuf import MetricsBufError
from metricsbuf._sagemaker_job import (
    ProcessPlacement,
    ResolvedTrialComponent,
    SageMakerJob,
    SageMakerJobError,
    TrialComponentNotFoundError,
    detect_sagemaker_job,
    in_sagemaker_job,
    process_placement,
    resolve_trial_component,
)

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
ROLE = "arn:aws:iam::123456789012:role/sagemaker"
RUN_CONFIG = {"ExperimentName": "exp", "TrialName": "exp-trial", "RunName": "exp-run-7"}
TRAINING_ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/Train-Job-1"


@pytest.fixture
async def sagemaker(moto_url: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "sagemaker", region_name="us-east-1", endpoint_url=moto_url, **CREDENTIALS
    ) as client:
        yield client


async def create_training_job(sagemaker: Any, name: str, experiment_config: dict[str, str] | None) -> str:
    extra = {"ExperimentConfig": experiment_config} if experiment_config else {}
    created = await sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": "image", "TrainingInputMode": "File"},
        RoleArn=ROLE,
        OutputDataConfig={"S3OutputPath": "s3://bucket/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
        **extra,
    )
    return str(created["TrainingJobArn"])


async def create_processing_job(sagemaker: Any, name: str, experiment_config: dict[str, str] | None) -> str:
    extra = {"ExperimentConfig": experiment_config} if experiment_config else {}
    created = await sagemaker.create_processing_job(
        ProcessingJobName=name,
        AppSpecification={"ImageUri": "image"},
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}
        },
        RoleArn=ROLE,
        **extra,
    )
    return str(created["ProcessingJobArn"])


async def create_transform_job(sagemaker: Any, name: str, experiment_config: dict[str, str] | None) -> str:
    extra = {"ExperimentConfig": experiment_config} if experiment_config else {}
    created = await sagemaker.create_transform_job(
        TransformJobName=name,
        ModelName="model",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}}},
        TransformOutput={"S3OutputPath": "s3://bucket/out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        **extra,
    )
    return str(created["TransformJobArn"])


def write_processing_config(root: Path, content: str) -> Path:
    path = root / "config" / "processingjobconfig.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message or code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeTrainingJob",
    )


class StubSageMaker:
    """A stand-in ``sagemaker`` client (for paths moto never takes): ``describe_training_job``
    takes its outcomes in order, raising the exceptions and returning the dicts."""

    def __init__(self, *outcomes: BaseException | dict[str, Any]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    async def describe_training_job(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


# ---- precedence ---------------------------------------------------------------------------


async def test_the_argument_wins_over_everything(tmp_path: Path) -> None:
    write_processing_config(tmp_path, json.dumps({"ProcessingJobArn": "arn:x:processing-job/p"}))
    stub = StubSageMaker()  # no outcomes: any call would fail the test
    environ = {"METRICSBUF_TRIAL_COMPONENT": "from-env", "TRAINING_JOB_ARN": TRAINING_ARN}
    resolved = await resolve_trial_component("my-run", environ=environ, config_root=tmp_path, client=stub)
    assert resolved == ResolvedTrialComponent("my-run", "argument")
    assert stub.calls == []


async def test_the_argument_is_used_as_is(tmp_path: Path) -> None:
    # Validation is the logger's: the resolver hands back exactly what it was given.
    resolved = await resolve_trial_component("Not-Valid!", environ={}, config_root=tmp_path)
    assert resolved.name == "Not-Valid!" and resolved.source == "argument"


async def test_the_environment_variable_wins_over_a_job(tmp_path: Path) -> None:
    stub = StubSageMaker()
    environ = {"METRICSBUF_TRIAL_COMPONENT": "from-env", "TRAINING_JOB_ARN": TRAINING_ARN}
    resolved = await resolve_trial_component(environ=environ, config_root=tmp_path, client=stub)
    assert resolved == ResolvedTrialComponent("from-env", "environment:METRICSBUF_TRIAL_COMPONENT")
    assert resolved.job is None and stub.calls == []


async def test_an_empty_environment_variable_is_not_a_name(tmp_path: Path) -> None:
    stub = StubSageMaker({"TrainingJobName": "Train-Job-1"})
    environ = {"METRICSBUF_TRIAL_COMPONENT": "  ", "TRAINING_JOB_ARN": TRAINING_ARN}
    resolved = await resolve_trial_component(environ=environ, config_root=tmp_path, client=stub)
    assert resolved.name == "train-job-1-aws-training-job"
    assert stub.calls == [{"TrainingJobName": "Train-Job-1"}]


async def test_no_job_anywhere_lists_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(TrialComponentNotFoundError) as caught:
        await resolve_trial_component(environ={}, config_root=tmp_path)
    error = caught.value
    assert isinstance(error, MetricsBufError)
    config = tmp_path / "config" / "processingjobconfig.json"
    assert error.tried == (
        "the trial_component_name argument: not given",
        "METRICSBUF_TRIAL_COMPONENT: not set",
        "a SageMaker training job: TRAINING_JOB_ARN not set",
        f"a SageMaker processing job: {config} not found",
        "a SageMaker transform job: TRANSFORM_JOB_ARN not set",
    )
    for step in error.tried:
        assert step in str(error)
    assert "trial_component_name=" in str(error) and "METRICSBUF_TRIAL_COMPONENT" in str(error)


# ---- the three kinds of job, against moto -------------------------------------------------


async def test_training_job_with_a_run_name_uses_it(sagemaker: Any, tmp_path: Path) -> None:
    arn = await create_training_job(sagemaker, "Train-With-Run", RUN_CONFIG)
    resolved = await resolve_trial_component(
        environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path, client=sagemaker
    )
    assert resolved.name == "exp-run-7"
    assert resolved.source == "training job Train-With-Run: ExperimentConfig.RunName"
    assert resolved.job == SageMakerJob("training", "Train-With-Run", arn, "TRAINING_JOB_ARN")


async def test_training_job_without_experiment_config_uses_its_own_component_lowercased(
    sagemaker: Any, tmp_path: Path
) -> None:
    arn = await create_training_job(sagemaker, "My-BIG-Training-Job", None)
    assert "ExperimentConfig" not in await sagemaker.describe_training_job(
        TrainingJobName="My-BIG-Training-Job"
    )
    resolved = await resolve_trial_component(
        environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path, client=sagemaker
    )
    assert resolved.name == "my-big-training-job-aws-training-job"
    assert resolved.source == "training job My-BIG-Training-Job: the job's own trial component"


async def test_an_experiment_config_without_run_name_falls_back_to_the_own_component(
    sagemaker: Any, tmp_path: Path
) -> None:
    arn = await create_training_job(sagemaker, "No-Run-Name", {"ExperimentName": "exp", "TrialName": "t"})
    resolved = await resolve_trial_component(
        environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path, client=sagemaker
    )
    assert resolved.name == "no-run-name-aws-training-job"


@pytest.mark.parametrize("with_run", [True, False], ids=["run-name", "own-component"])
async def test_processing_job_is_found_by_its_config_file(
    sagemaker: Any, tmp_path: Path, with_run: bool
) -> None:
    name = f"Proc-Job-{with_run}"
    arn = await create_processing_job(sagemaker, name, RUN_CONFIG if with_run else None)
    config = write_processing_config(tmp_path, json.dumps({"ProcessingJobArn": arn, "Other": 1}))
    resolved = await resolve_trial_component(environ={}, config_root=tmp_path, client=sagemaker)
    assert resolved.job == SageMakerJob("processing", name, arn, str(config))
    if with_run:
        assert (resolved.name, resolved.source) == (
            "exp-run-7",
            f"processing job {name}: ExperimentConfig.RunName",
        )
    else:
        assert (resolved.name, resolved.source) == (
            f"{name.lower()}-aws-processing-job",
            f"processing job {name}: the job's own trial component",
        )


@pytest.mark.parametrize("with_run", [True, False], ids=["run-name", "own-component"])
async def test_transform_job_is_found_by_its_variable(sagemaker: Any, tmp_path: Path, with_run: bool) -> None:
    name = f"Xform-Job-{with_run}"
    arn = await create_transform_job(sagemaker, name, RUN_CONFIG if with_run else None)
    resolved = await resolve_trial_component(
        environ={"TRANSFORM_JOB_ARN": arn}, config_root=tmp_path, client=sagemaker
    )
    assert resolved.job == SageMakerJob("transform", name, arn, "TRANSFORM_JOB_ARN")
    expected = "exp-run-7" if with_run else f"{name.lower()}-aws-transform-job"
    assert resolved.name == expected


async def test_a_job_the_service_does_not_know_is_a_clear_error(sagemaker: Any, tmp_path: Path) -> None:
    arn = "arn:aws:sagemaker:us-east-1:123456789012:training-job/never-created"
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(
            environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path, client=sagemaker
        )
    error = caught.value
    assert (error.kind, error.job_name, error.error_code) == (
        "training",
        "never-created",
        "ValidationException",
    )
    message = str(error)
    assert "'never-created'" in message and "DescribeTrainingJob failed (ValidationException" in message
    assert "Could not find training job" in message


# ---- the own client -----------------------------------------------------------------------


async def test_aws_endpoint_url_sagemaker_is_honoured_and_the_region_comes_from_the_arn(
    sagemaker: Any, moto_url: str, aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arn = await create_training_job(sagemaker, "Endpoint-From-Env", RUN_CONFIG)
    # botocore's service-specific endpoint variable; no endpoint_url, no region configured
    # (aws_env removes them): only moto knows this job, so an answer proves the variable was used.
    aws_env.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)
    resolved = await resolve_trial_component(environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path)
    assert resolved.name == "exp-run-7"


async def test_own_client_with_explicit_endpoint_and_region(
    sagemaker: Any, moto_url: str, aws_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arn = await create_transform_job(sagemaker, "Explicit-Endpoint", None)
    resolved = await resolve_trial_component(
        environ={"TRANSFORM_JOB_ARN": arn},
        config_root=tmp_path,
        region_name="us-east-1",
        endpoint_url=moto_url,
    )
    assert resolved.name == "explicit-endpoint-aws-transform-job"


async def test_no_region_anywhere_is_a_clear_error(aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An ARN without a region (not what SageMaker sets, but possible by hand) and none configured.
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(environ={"TRAINING_JOB_ARN": "training-job/abc"}, config_root=tmp_path)
    assert caught.value.error_code == "NoRegionError"
    assert "no AWS region" in str(caught.value) and "'abc'" in str(caught.value)


# ---- failures of the Describe call (stub client: moto never throttles or denies) ----------


@pytest.mark.parametrize(
    "transient",
    [
        client_error("ThrottlingException", 400, "Rate exceeded"),
        client_error("ServiceUnavailable", 503),
        EndpointConnectionError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com"),
    ],
    ids=["throttled", "503", "connection"],
)
async def test_transient_failures_are_retried(tmp_path: Path, transient: Exception) -> None:
    stub = StubSageMaker(transient, transient, {"ExperimentConfig": {"RunName": "after-retries"}})
    resolved = await resolve_trial_component(
        environ={"TRAINING_JOB_ARN": TRAINING_ARN}, config_root=tmp_path, client=stub, initial_backoff=0.001
    )
    assert resolved.name == "after-retries"
    assert stub.calls == [{"TrainingJobName": "Train-Job-1"}] * 3


async def test_throttling_that_outlasts_the_attempts_is_a_clear_error(tmp_path: Path) -> None:
    throttled = client_error("ThrottlingException", 400, "Rate exceeded")
    stub = StubSageMaker(*[throttled] * 3)
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(
            environ={"TRAINING_JOB_ARN": TRAINING_ARN},
            config_root=tmp_path,
            client=stub,
            attempts=3,
            initial_backoff=0.001,
        )
    assert len(stub.calls) == 3
    assert caught.value.error_code == "ThrottlingException"
    assert "kept failing (3 attempts, last: ThrottlingException: Rate exceeded)" in str(caught.value)


async def test_access_denied_is_not_retried_and_names_the_permission(tmp_path: Path) -> None:
    denied = client_error(
        "AccessDeniedException",
        400,
        "User: arn:aws:sts::123456789012:assumed-role/r/s is not authorized to perform: "
        "sagemaker:DescribeTrainingJob",
    )
    stub = StubSageMaker(denied)
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(
            environ={"TRAINING_JOB_ARN": TRAINING_ARN}, config_root=tmp_path, client=stub
        )
    assert len(stub.calls) == 1
    error = caught.value
    assert isinstance(error, MetricsBufError) and error.__cause__ is denied
    assert (error.kind, error.job_name, error.error_code) == (
        "training",
        "Train-Job-1",
        "AccessDeniedException",
    )
    message = str(error)
    assert "training job 'Train-Job-1' (from TRAINING_JOB_ARN)" in message
    assert "DescribeTrainingJob was denied (AccessDeniedException: User: arn:aws:sts::" in message
    assert "needs the IAM permission sagemaker:DescribeTrainingJob for the job's execution role" in message
    assert "METRICSBUF_TRIAL_COMPONENT" in message


async def test_a_connection_failure_that_outlasts_the_attempts_names_it_once(tmp_path: Path) -> None:
    down = EndpointConnectionError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com")
    stub = StubSageMaker(down, down)
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(
            environ={"TRAINING_JOB_ARN": TRAINING_ARN},
            config_root=tmp_path,
            client=stub,
            attempts=2,
            initial_backoff=0.001,
        )
    assert caught.value.error_code == "EndpointConnectionError"
    assert "kept failing (2 attempts, last: EndpointConnectionError: Could not connect" in str(caught.value)
    assert "EndpointConnectionError: EndpointConnectionError" not in str(caught.value)


async def test_missing_credentials_are_named_as_such(
    moto_url: str, no_aws_config: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_aws_config.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(environ={"TRAINING_JOB_ARN": TRAINING_ARN}, config_root=tmp_path)
    message = str(caught.value)
    assert caught.value.error_code == "NoCredentialsError"
    assert "DescribeTrainingJob could not be signed: no AWS credentials found" in message
    assert "IAM permission" not in message


# ---- a job that cannot be read ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "it is not valid JSON"),
        ('["a", "list"]', "it has no ProcessingJobArn string (found none)"),
        ('{"ProcessingJobName": "p"}', "it has no ProcessingJobArn string (found none)"),
        ('{"ProcessingJobArn": 7}', "it has no ProcessingJobArn string (found int)"),
    ],
    ids=["not-json", "list", "no-arn", "arn-not-string"],
)
async def test_malformed_processing_job_config_names_the_file(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = write_processing_config(tmp_path, content)
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(environ={}, config_root=tmp_path, client=StubSageMaker())
    assert caught.value.kind == "processing" and caught.value.job_name is None
    assert f"SageMaker processing job ({path} exists), but {problem}" in str(caught.value)


async def test_unreadable_processing_job_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config" / "processingjobconfig.json"
    path.mkdir(parents=True)  # exists, but reading it fails
    with pytest.raises(SageMakerJobError, match="it cannot be read") as caught:
        await resolve_trial_component(environ={}, config_root=tmp_path, client=StubSageMaker())
    assert str(path) in str(caught.value) and caught.value.error_code == "UnreadableJobConfig"


@pytest.mark.parametrize("arn", ["", "not-an-arn", "arn:aws:sagemaker:us-east-1:1:training-job/"])
async def test_an_arn_without_a_job_name_is_a_clear_error(tmp_path: Path, arn: str) -> None:
    with pytest.raises(SageMakerJobError) as caught:
        await resolve_trial_component(
            environ={"TRAINING_JOB_ARN": arn}, config_root=tmp_path, client=StubSageMaker()
        )
    assert "TRAINING_JOB_ARN should hold a SageMaker training job ARN" in str(caught.value)
    assert f"got {arn!r}" in str(caught.value)


# ---- job detection and placement helpers --------------------------------------------------


def test_in_sagemaker_job_checks_in_the_sdks_order(tmp_path: Path) -> None:
    assert in_sagemaker_job({}, tmp_path) is None
    assert in_sagemaker_job({"TRANSFORM_JOB_ARN": "a/x"}, tmp_path) == "transform"
    write_processing_config(tmp_path, "not even read")
    assert in_sagemaker_job({"TRANSFORM_JOB_ARN": "a/x"}, tmp_path) == "processing"
    assert in_sagemaker_job({"TRAINING_JOB_ARN": "a/x", "TRANSFORM_JOB_ARN": "a/y"}, tmp_path) == "training"


def test_detect_sagemaker_job_reads_the_name_from_the_arn(tmp_path: Path) -> None:
    assert detect_sagemaker_job({}, tmp_path) is None
    assert detect_sagemaker_job({"TRAINING_JOB_ARN": TRAINING_ARN}, tmp_path) == SageMakerJob(
        "training", "Train-Job-1", TRAINING_ARN, "TRAINING_JOB_ARN"
    )


def test_placement_under_torchrun_in_a_sagemaker_cluster() -> None:
    placement = process_placement(
        {
            "RANK": "5",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "SM_CURRENT_HOST": "algo-2",
            "SM_HOSTS": '["algo-1", "algo-2", "algo-3", "algo-4"]',
        }
    )
    assert placement == ProcessPlacement(
        host="algo-2",
        hosts=("algo-1", "algo-2", "algo-3", "algo-4"),
        rank=5,
        rank_source="RANK",
        local_rank=1,
        world_size=8,
    )
    assert placement.host_index == 1 and not placement.is_rank_zero


def test_placement_with_no_variables() -> None:
    placement = process_placement({})
    assert placement == ProcessPlacement(None, (), None, None, None, None)
    assert placement.is_rank_zero and placement.host_index is None


@pytest.mark.parametrize(
    ("environ", "rank", "source"),
    [
        ({"SLURM_PROCID": "3"}, 3, "SLURM_PROCID"),
        ({"JSM_NAMESPACE_RANK": "0"}, 0, "JSM_NAMESPACE_RANK"),
        # As Lightning: LOCAL_RANK before SLURM_PROCID (SLURM may set it without running the processes).
        ({"LOCAL_RANK": "0", "SLURM_PROCID": "2"}, 0, "LOCAL_RANK"),
        ({"RANK": "2", "LOCAL_RANK": "0", "SLURM_PROCID": "9"}, 2, "RANK"),
    ],
)
def test_rank_is_read_as_lightning_reads_it(environ: dict[str, str], rank: int, source: str) -> None:
    placement = process_placement(environ)
    assert (placement.rank, placement.rank_source, placement.is_rank_zero) == (rank, source, rank == 0)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"RANK": "one"}, "RANK should be a non-negative integer, got 'one'"),
        ({"WORLD_SIZE": "-2"}, "WORLD_SIZE should be a non-negative integer, got '-2'"),
        ({"SM_HOSTS": "algo-1,algo-2"}, "SM_HOSTS should be a JSON list of host names, got 'algo-1,algo-2'"),
        ({"SM_HOSTS": "[1, 2]"}, "SM_HOSTS should be a JSON list of host names"),
    ],
)
def test_malformed_placement_variables_are_named(environ: dict[str, str], named: str) -> None:
    with pytest.raises(MetricsBufError, match=named.replace("[", r"\[")):
        process_placement(environ)
