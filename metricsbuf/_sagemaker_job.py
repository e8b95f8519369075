"""Which trial component to log to, found without configuration inside SageMaker jobs.

``resolve_trial_component`` tries, in order:

1. the explicit argument (used as is; the logger validates it);
2. the operator's environment variable ``METRICSBUF_TRIAL_COMPONENT``;
3. the SageMaker job this process runs in, detected as the SageMaker Python SDK detects it
   (``sagemaker/experiments/_environment.py``):

   - a training job by the environment variable ``TRAINING_JOB_ARN``;
   - a processing job by the file ``/opt/ml/config/processingjobconfig.json`` (``ProcessingJobArn``);
   - a transform job by the environment variable ``TRANSFORM_JOB_ARN``.

   The job is described (``DescribeTrainingJob`` / ``DescribeProcessingJob`` /
   ``DescribeTransformJob``): its ``ExperimentConfig.RunName`` is the trial component of the
   SDK ``Run`` that started it; without one, the job's own trial component,
   ``<job-name>-aws-training-job`` (``-aws-processing-job``, ``-aws-transform-job``), lowercased.

Nothing found raises ``TrialComponentNotFoundError`` listing what was tried; a job found but
unreadable or not describable raises ``SageMakerJobError``. Both are raised once, at start.

``in_sagemaker_job`` and ``process_placement`` are synchronous helpers (job kind; host and
rank) for framework integrations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from ._exceptions import InvalidMetricError, MetricsBufError
from ._retry_policy import classify_exception
from ._validation import check_trial_component_name

log = logging.getLogger("metricsbuf")

TRIAL_COMPONENT_ENV = "METRICSBUF_TRIAL_COMPONENT"
TRAINING_JOB_ARN_ENV = "TRAINING_JOB_ARN"
TRANSFORM_JOB_ARN_ENV = "TRANSFORM_JOB_ARN"
DEFAULT_CONFIG_ROOT = "/opt/ml"
# Relative to the config root, as the SDK reads it.
PROCESSING_JOB_CONFIG = Path("config", "processingjobconfig.json")

JobKind = Literal["training", "processing", "transform"]

# kind -> (Describe operation, its client method, its name parameter, own trial component suffix)
_JOB_API: dict[str, tuple[str, str, str, str]] = {
    "training": ("DescribeTrainingJob", "describe_training_job", "TrainingJobName", "-aws-training-job"),
    "processing": (
        "DescribeProcessingJob",
        "describe_processing_job",
        "ProcessingJobName",
        "-aws-processing-job",
    ),
    "transform": ("DescribeTransformJob", "describe_transform_job", "TransformJobName", "-aws-transform-job"),
}
# Error codes for a Describe call the job's role is not allowed to make.
_ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})


class TrialComponentNotFoundError(MetricsBufError):
    """No trial component name was given and none could be found; ``tried`` lists what was looked at."""

    def __init__(self, tried: tuple[str, ...], why_not_more: str = "") -> None:
        self.tried = tried
        super().__init__(
            "metricsbuf: no trial component to log to. Tried, in order:\n"
            + "".join(f"  - {step}\n" for step in tried)
            + (f"({why_not_more})\n" if why_not_more else "")
            + f"Pass trial_component_name=, set {TRIAL_COMPONENT_ENV}, "
            "or run inside a SageMaker training, processing or transform job."
        )


class SageMakerJobError(MetricsBufError):
    """This process runs in a SageMaker job whose trial component could not be found: the job's
    config could not be read, or the Describe call was denied or kept failing.

    ``kind`` and ``job_name`` (``None`` when the job's ARN could not be read) name the job,
    ``error_code`` the underlying error (a botocore code such as ``AccessDeniedException``).
    """

    def __init__(self, message: str, *, kind: JobKind, job_name: str | None, error_code: str) -> None:
        self.kind = kind
        self.job_name = job_name
        self.error_code = error_code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class SageMakerJob:
    """The SageMaker job this process runs in, as its environment shows it."""

    kind: JobKind
    name: str
    arn: str
    # Where it was seen: an environment variable's name or the processing job config's path.
    found_by: str


@dataclass(frozen=True, slots=True)
class ResolvedTrialComponent:
    """The trial component to log to and how it was found.

    ``source`` is one of ``"argument"``, ``"environment:METRICSBUF_TRIAL_COMPONENT"``,
    ``"<kind> job <name>: ExperimentConfig.RunName"`` or
    ``"<kind> job <name>: the job's own trial component"``; ``job`` is set in the last two.
    """

    name: str
    source: str
    job: SageMakerJob | None = None


class SageMakerClient(Protocol):
    """The calls the resolver makes; an aiobotocore ``sagemaker`` client has them.

    A client used for one kind of job needs only that kind's call.
    """

    async def describe_training_job(self, **kwargs: Any) -> dict[str, Any]: ...

    async def describe_processing_job(self, **kwargs: Any) -> dict[str, Any]: ...

    async def describe_transform_job(self, **kwargs: Any) -> dict[str, Any]: ...


def in_sagemaker_job(
    environ: Mapping[str, str] | None = None, config_root: str | os.PathLike[str] = DEFAULT_CONFIG_ROOT
) -> JobKind | None:
    """The kind of SageMaker job this process runs in, or ``None``; checked as the SDK checks it.

    Only looks at the variables and whether the processing job config exists: it reads nothing
    and never raises (``resolve_trial_component`` reports a job config it cannot read).
    """
    env = os.environ if environ is None else environ
    if TRAINING_JOB_ARN_ENV in env:
        return "training"
    if (Path(config_root) / PROCESSING_JOB_CONFIG).exists():
        return "processing"
    if TRANSFORM_JOB_ARN_ENV in env:
        return "transform"
    return None


def detect_sagemaker_job(
    environ: Mapping[str, str] | None = None, config_root: str | os.PathLike[str] = DEFAULT_CONFIG_ROOT
) -> SageMakerJob | None:
    """The job this process runs in (kind, name, ARN), or ``None`` outside any.

    Raises SageMakerJobError when a job is signalled but its ARN cannot be read: a processing
    job config that is unreadable, not JSON or has no ``ProcessingJobArn``; an ARN with no name.
    """
    env = os.environ if environ is None else environ
    kind = in_sagemaker_job(env, config_root)
    if kind is None:
        return None
    if kind == "processing":
        path = Path(config_root) / PROCESSING_JOB_CONFIG
        found_by = str(path)
        arn = _processing_job_arn(path)
    else:
        found_by = TRAINING_JOB_ARN_ENV if kind == "training" else TRANSFORM_JOB_ARN_ENV
        arn = env[found_by]
    # As the SDK does: the job name is the ARN's last "/" part
    # (arn:aws:sagemaker:<region>:<account>:training-job/<name>).
    name = arn.rsplit("/", 1)[-1].strip() if "/" in arn else ""
    if not name:
        raise SageMakerJobError(
            f"metricsbuf: {found_by} should hold a SageMaker {kind} job ARN "
            f"(arn:aws:sagemaker:<region>:<account>:{kind}-job/<name>), got {arn!r}",
            kind=kind,
            job_name=None,
            error_code="InvalidJobArn",
        )
    return SageMakerJob(kind=kind, name=name, arn=arn, found_by=found_by)


def _processing_job_arn(path: Path) -> str:
    def fail(problem: str, code: str) -> SageMakerJobError:
        return SageMakerJobError(
            f"metricsbuf: this looks like a SageMaker processing job ({path} exists), but {problem}",
            kind="processing",
            job_name=None,
            error_code=code,
        )

    # A small local file read once at start: not worth a worker thread.
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"it cannot be read: {exc}", "UnreadableJobConfig") from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"it is not valid JSON: {exc}", "MalformedJobConfig") from exc
    arn = config.get("ProcessingJobArn") if isinstance(config, dict) else None
    if not isinstance(arn, str):
        raise fail(
            f"it has no ProcessingJobArn string (found {type(arn).__name__ if arn is not None else 'none'})",
            "MalformedJobConfig",
        )
    return arn


async def find_trial_component(
    name: str | None, *, offline: bool, region_name: str | None
) -> ResolvedTrialComponent:
    """The trial component a logger uses, checked against the service's rule (for MetricsLogger.start).

    ``name`` is the logger's argument (already checked), or None to find one. Offline the logger
    never touches the network, so it does not ask a SageMaker job: only the environment counts.

    Raises:
        TrialComponentNotFoundError: none was found (the message lists what was tried).
        SageMakerJobError: inside a job, its Describe call was denied or kept failing.
        InvalidMetricError: the name found breaks the service's rule (says where it came from).
    """
    if name is not None:
        return ResolvedTrialComponent(name, "argument")
    if offline:
        from_env = os.environ.get(TRIAL_COMPONENT_ENV)
        if not from_env:
            raise TrialComponentNotFoundError(
                ("the trial_component_name argument: not given", f"{TRIAL_COMPONENT_ENV}: not set"),
                "offline=True never touches the network, so it does not ask a SageMaker job",
            )
        resolved = ResolvedTrialComponent(from_env, f"environment:{TRIAL_COMPONENT_ENV}")
    else:
        resolved = await resolve_trial_component(None, region_name=region_name)
    try:
        checked = check_trial_component_name(resolved.name)
    except InvalidMetricError as exc:
        raise InvalidMetricError(f"{exc} (found from {resolved.source})") from None
    return ResolvedTrialComponent(checked, resolved.source, resolved.job)


async def resolve_trial_component(
    trial_component_name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_root: str | os.PathLike[str] = DEFAULT_CONFIG_ROOT,
    client: SageMakerClient | None = None,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    attempts: int = 4,
    initial_backoff: float = 0.5,
) -> ResolvedTrialComponent:
    """Finds the trial component to log to (see the module's docstring for the order).

    Args:
        trial_component_name: the caller's explicit name; returned as is when not ``None``.
        environ: the variables to read (default ``os.environ``). AWS settings for an own client
            (credentials, ``AWS_ENDPOINT_URL_SAGEMAKER``...) still come from the process, as botocore
            reads them.
        config_root: where SageMaker mounts its config (default ``/opt/ml``).
        client: a ``sagemaker`` client for the Describe call. It is used as is: create it with
            ``AioConfig(retries={"total_max_attempts": 1})`` so its retries do not multiply ours.
        region_name, endpoint_url: for the client created when none is given, only when a job is
            found. Without ``region_name``, the job ARN's region is used (the job lives there);
            without ``endpoint_url``, botocore's own configuration (``AWS_ENDPOINT_URL_SAGEMAKER``,
            ``AWS_ENDPOINT_URL``, config file) applies.
        attempts, initial_backoff: the Describe call is made up to ``attempts`` times, with
            exponential backoff and jitter from ``initial_backoff`` seconds, while it fails with
            throttling, a 5xx or a connection error (it can be throttled right at job start).

    Raises:
        TrialComponentNotFoundError: nothing gave a name; the message lists what was tried.
        SageMakerJobError: inside a job whose config is unreadable, or whose Describe call was
            denied or failed for good; names the job, the call, the error and the permission.
    """
    if trial_component_name is not None:
        return ResolvedTrialComponent(trial_component_name, "argument")
    env = os.environ if environ is None else environ
    tried = ["the trial_component_name argument: not given"]
    from_env = env.get(TRIAL_COMPONENT_ENV)
    # An empty value is what a template leaves when it had nothing to fill in: not a name.
    if from_env and from_env.strip():
        return ResolvedTrialComponent(from_env, f"environment:{TRIAL_COMPONENT_ENV}")
    tried.append(f"{TRIAL_COMPONENT_ENV}: {'empty' if from_env is not None else 'not set'}")

    job = detect_sagemaker_job(env, config_root)
    if job is None:
        tried += [
            f"a SageMaker training job: {TRAINING_JOB_ARN_ENV} not set",
            f"a SageMaker processing job: {Path(config_root) / PROCESSING_JOB_CONFIG} not found",
            f"a SageMaker transform job: {TRANSFORM_JOB_ARN_ENV} not set",
        ]
        raise TrialComponentNotFoundError(tuple(tried))

    async with _sagemaker_client(client, job, region_name=region_name, endpoint_url=endpoint_url) as sm:
        described = await _describe(sm, job, attempts=attempts, initial_backoff=initial_backoff)
    label = f"{job.kind} job {job.name}"
    run_name = (described.get("ExperimentConfig") or {}).get("RunName")
    if isinstance(run_name, str) and run_name:
        # The SDK's Run sets RunName to its trial component's name.
        return ResolvedTrialComponent(run_name, f"{label}: ExperimentConfig.RunName", job)
    suffix = _JOB_API[job.kind][3]
    # Job names may contain capitals, trial component names may not (SageMaker lowercases them).
    return ResolvedTrialComponent((job.name + suffix).lower(), f"{label}: the job's own trial component", job)


@contextlib.asynccontextmanager
async def _sagemaker_client(
    client: SageMakerClient | None,
    job: SageMakerJob,
    *,
    region_name: str | None,
    endpoint_url: str | None,
) -> AsyncIterator[SageMakerClient]:
    if client is not None:
        yield client
        return
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from botocore.exceptions import NoRegionError

    session = get_session()
    region = region_name or _arn_region(job.arn) or None
    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=30)
    # endpoint_url is passed only when given, so that botocore's AWS_ENDPOINT_URL_SAGEMAKER /
    # AWS_ENDPOINT_URL and the config file's endpoint_url keep working.
    kwargs: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint_url is not None:
        kwargs["endpoint_url"] = endpoint_url
    try:
        async with session.create_client("sagemaker", **kwargs) as created:
            yield created
    except NoRegionError as exc:
        raise SageMakerJobError(
            f"metricsbuf: no AWS region to describe {job.kind} job {job.name!r} in: its ARN "
            f"{job.arn!r} names none and none is configured; pass region_name= or set AWS_DEFAULT_REGION",
            kind=job.kind,
            job_name=job.name,
            error_code="NoRegionError",
        ) from exc


def _arn_region(arn: str) -> str:
    parts = arn.split(":", 5)
    return parts[3] if len(parts) == 6 and parts[0] == "arn" else ""


async def _describe(
    client: SageMakerClient, job: SageMakerJob, *, attempts: int, initial_backoff: float
) -> dict[str, Any]:
    operation, method, parameter, _ = _JOB_API[job.kind]
    call = getattr(client, method)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, attempts)),
        # Jitter scaled to the backoff (tenacity's default adds up to a whole second).
        wait=wait_exponential_jitter(
            multiplier=initial_backoff, max=max(initial_backoff, 8.0), jitter=initial_backoff
        ),
        retry=retry_if_exception(lambda exc: classify_exception(exc).retryable),
        before_sleep=lambda state: log.debug(
            "metricsbuf: %s for %s job %s failed (attempt %d), retrying: %s",
            operation,
            job.kind,
            job.name,
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        ),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                response = await call(**{parameter: job.name})
    except Exception as exc:
        raise _describe_error(exc, job, operation, attempts) from exc
    return response if isinstance(response, dict) else {}


def _describe_error(exc: Exception, job: SageMakerJob, operation: str, attempts: int) -> SageMakerJobError:
    from botocore.exceptions import ClientError, NoCredentialsError

    failure = classify_exception(exc)
    # classify_exception's message already starts with the type for anything but a ClientError.
    detail = f"{failure.code}: {failure.message}" if isinstance(exc, ClientError) else failure.message
    if isinstance(exc, NoCredentialsError):
        what = f"could not be signed: no AWS credentials found ({detail})"
        needed = "AWS credentials (inside a job, its execution role provides them)"
    else:
        if failure.code in _ACCESS_DENIED:
            what = f"was denied ({detail})"
        elif failure.retryable:
            what = f"kept failing ({attempts} attempts, last: {detail})"
        else:
            what = f"failed ({detail})"
        needed = f"the IAM permission sagemaker:{operation} for the job's execution role"
    return SageMakerJobError(
        f"metricsbuf: running in SageMaker {job.kind} job {job.name!r} (from {job.found_by}), but "
        f"{operation} {what}. Finding the job's trial component needs {needed}; "
        f"or name the trial component yourself with trial_component_name= or {TRIAL_COMPONENT_ENV}.",
        kind=job.kind,
        job_name=job.name,
        error_code=failure.code,
    )


@dataclass(frozen=True, slots=True)
class ProcessPlacement:
    """Where this process sits in a distributed job, from the usual environment variables.

    Every field is ``None`` (``hosts`` empty) when its variables are not set.
    """

    # SageMaker: SM_CURRENT_HOST (e.g. "algo-1") and SM_HOSTS (a JSON list), from resourceconfig.json.
    host: str | None
    hosts: tuple[str, ...]
    # The global rank as Lightning reads it: the first of RANK, LOCAL_RANK, SLURM_PROCID,
    # JSM_NAMESPACE_RANK (LOCAL_RANK before SLURM_PROCID, which SLURM can set without managing
    # the processes). ``rank_source`` names the variable it came from.
    rank: int | None
    rank_source: str | None
    # torchrun's LOCAL_RANK and WORLD_SIZE.
    local_rank: int | None
    world_size: int | None

    @property
    def is_rank_zero(self) -> bool:
        """True unless a rank variable says otherwise (Lightning's ``rank_zero_only`` rule)."""
        return not self.rank

    @property
    def host_index(self) -> int | None:
        """This host's position in ``hosts`` (0 for the first host), when both are known."""
        if self.host is None or self.host not in self.hosts:
            return None
        return self.hosts.index(self.host)


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_placement(environ: Mapping[str, str] | None = None) -> ProcessPlacement:
    """Reads host and rank variables; raises MetricsBufError naming a variable that is set but malformed."""
    env = os.environ if environ is None else environ
    rank_source = next((name for name in RANK_VARIABLES if name in env), None)
    hosts_text = env.get("SM_HOSTS")
    hosts: tuple[str, ...] = ()
    if hosts_text is not None:
        try:
            parsed = json.loads(hosts_text)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(h, str) for h in parsed):
            raise MetricsBufError(
                f"metricsbuf: SM_HOSTS should be a JSON list of host names, got {hosts_text!r}"
            )
        hosts = tuple(parsed)
    return ProcessPlacement(
        host=env.get("SM_CURRENT_HOST") or None,
        hosts=hosts,
        rank=_int_variable(env, rank_source) if rank_source else None,
        rank_source=rank_source,
        local_rank=_int_variable(env, "LOCAL_RANK"),
        world_size=_int_variable(env, "WORLD_SIZE"),
    )


def _int_variable(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise MetricsBufError(f"metricsbuf: {name} should be a non-negative integer, got {text!r}")
    return value
