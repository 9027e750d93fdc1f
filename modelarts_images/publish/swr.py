"""SWR naming and login credentials: pure functions, no network, no engine.

Login credentials are looked up in the environment, first source that is set wins:

1. ``HUAWEICLOUD_SDK_AK`` + ``HUAWEICLOUD_SDK_SK`` — the names Huawei Cloud's SDKs and KooCLI (hcloud) read;
2. ``HW_ACCESS_KEY`` + ``HW_SECRET_KEY`` — the names of Huawei Cloud's Terraform provider;
3. ``MODELARTS_SWR_LOGIN_USER`` + ``MODELARTS_SWR_LOGIN_PASSWORD`` — a ready (temporary) login, the ``-u`` and
   ``-p`` of the command SWR's console generates ("Generate Login Command");
4. ``MODELARTS_REGISTRY_USER`` + ``MODELARTS_REGISTRY_PASSWORD`` — a plain user name and password, for any
   registry.

Sources 1–3 apply only to SWR: a host ``swr.<region>.myhuaweicloud.com`` (or ``.eu``), or any host when a region
is given explicitly. An AK/SK pair is never turned into a login for another registry. An AK/SK pair becomes SWR's
long-term login: user ``<project name>@<AK>``, password the lowercase hex HMAC-SHA256 of the AK keyed by the SK
(SWR's "Obtaining a Long-Term Valid Login Command": ``docker login -u [Regional project name]@[AK] -p [Login key]``).
The project name is the region's (``cn-north-4``) for the region's default project, which is the default here; a
sub-project has a name of its own (``cn-north-4_team``), given with --project or ``swr_project``. The SK
itself is dropped at once; only the derived password is kept, and it never appears in a repr, a log line or an
error message. A temporary AK/SK (``HUAWEICLOUD_SDK_SECURITY_TOKEN`` / ``HW_SECURITY_TOKEN`` set beside it)
cannot make a long-term login, so that source is skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from modelarts_images.config import versions as config
from modelarts_images.errors import RegistryError
from modelarts_images.model import ImageSpec
from modelarts_images.shared.credentials import PROJECT_NAME, Credentials

# (access key, secret key, security token) variable names, in the order they are tried.
AK_SK_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_SECURITY_TOKEN"),
    ("HW_ACCESS_KEY", "HW_SECRET_KEY", "HW_SECURITY_TOKEN"),
)
SWR_LOGIN = ("MODELARTS_SWR_LOGIN_USER", "MODELARTS_SWR_LOGIN_PASSWORD")
REGISTRY_LOGIN = ("MODELARTS_REGISTRY_USER", "MODELARTS_REGISTRY_PASSWORD")

_SWR_HOST = re.compile(r"^swr\.(?P<region>[a-z]{2,}(?:-[a-z]+)+-[0-9]+)\.myhuaweicloud\.(?:com|eu)(?::[0-9]+)?$")
_REGION = re.compile(r"^[a-z]{2,}(?:-[a-z]+)+-[0-9]+$")
# Docker's limit for registry/organization/repository (the part before the tag).
MAX_NAME_LENGTH = 255


# --------------------------------------------------------------------------------------------------------------
# Region and long-term login


def region_of(registry: str) -> str | None:
    """'swr.cn-north-4.myhuaweicloud.com' -> 'cn-north-4'; None for a host that is not an SWR endpoint."""
    match = _SWR_HOST.match(registry.strip().lower())
    return match.group("region") if match else None


def login_key(access_key: str, secret_key: str) -> str:
    """SWR's long-term login password: lowercase hex HMAC-SHA256 of the AK, keyed by the SK."""
    return hmac.new(secret_key.encode("utf-8"), access_key.encode("utf-8"), hashlib.sha256).hexdigest()


def long_term_user(project: str, access_key: str) -> str:
    """SWR's long-term login user: '<project name>@<AK>' (the region's name for its default project)."""
    return f"{project}@{access_key}"


# --------------------------------------------------------------------------------------------------------------
# Credentials


def _pair(env: Mapping[str, str], first: str, second: str) -> tuple[str, str] | None:
    """Both values, None when neither is set; a half-set pair is an error that names the missing variable."""
    one, two = env.get(first, "").strip(), env.get(second, "")
    if not one and not two:
        return None
    if not one or not two:
        missing = first if not one else second
        present = second if not one else first
        raise RegistryError(f"{present} is set but {missing} is not: set both, or neither")
    return one, two


def credential_sources(registry: str, *, region: str | None = None, project: str | None = None) -> tuple[str, ...]:
    """The environment variable pairs tried for `registry`, in order, for messages and docs."""
    names: list[str] = []
    if _swr_region(registry, _login_region(registry, region, project)) is not None:
        names += [f"{ak}/{sk}" for ak, sk, _ in AK_SK_SOURCES]
        names.append("/".join(SWR_LOGIN))
    return (*names, "/".join(REGISTRY_LOGIN))


def _swr_region(registry: str, region: str | None) -> str | None:
    from_host = region_of(registry)
    if region is None:
        return from_host
    region = region.strip().lower()
    if not _REGION.match(region):
        raise RegistryError(f"region {region!r} is not a Huawei Cloud region name such as cn-north-4")
    if from_host is not None and from_host != region:
        raise RegistryError(f"region {region!r} does not match the registry {registry}, which is in {from_host}")
    return region


def _login_region(registry: str, region: str | None, project: str | None) -> str | None:
    """The region given, else the one a given project name starts with when the host names none (where it does,
    the project is checked against the host's)."""
    if project is None or region is not None or region_of(registry) is not None:
        return region
    named = PROJECT_NAME.match(project.strip())
    if named is None:
        raise RegistryError(f"project {project!r} is not a Huawei Cloud project name such as cn-north-4 or "
                            "cn-north-4_team")
    return named["region"]


def _project(swr_region: str, project: str | None) -> str:
    """The project whose name the long-term login carries: the region's default project unless one is given."""
    if project is None:
        return swr_region
    project = project.strip()
    match = PROJECT_NAME.match(project)
    if match is None:
        raise RegistryError(f"project {project!r} is not a Huawei Cloud project name: the region's own "
                            f"({swr_region}) or a sub-project's ({swr_region}_<name>, letters, digits, '_' or '-')")
    if match["region"] != swr_region:
        raise RegistryError(f"project {project!r} belongs to region {match['region']}, but the registry is in "
                            f"{swr_region}")
    return project


def resolve_credentials(
    registry: str, env: Mapping[str, str], *, region: str | None = None, project: str | None = None
) -> Credentials | None:
    """The login for `registry` from the first source set in `env` (see the module doc); None when none is set.

    `region` makes any host count as SWR in that region (a private endpoint, a test registry); without it the
    region comes from the host name, and a host that is not SWR only gets MODELARTS_REGISTRY_USER/PASSWORD.
    `project` names the IAM project of a long-term login (default: the region's own project); like `region`, it
    makes any host count as SWR, in the project's region.
    """
    swr_region = _swr_region(registry, _login_region(registry, region, project))
    skipped: list[str] = []
    if swr_region is not None:
        login_project = _project(swr_region, project)
        for ak_name, sk_name, token_name in AK_SK_SOURCES:
            pair = _pair(env, ak_name, sk_name)
            if pair is None:
                continue
            if env.get(token_name):
                skipped.append(f"{ak_name}/{sk_name} (a temporary AK/SK: {token_name} is set, and SWR's long-term "
                               "login needs a permanent AK/SK)")
                continue
            access_key, secret_key = pair
            return Credentials(registry=registry,
                               username=long_term_user(login_project, access_key),
                               password=login_key(access_key, secret_key),
                               source=f"{ak_name}/{sk_name} (long-term login)",
                               check=f"check that {ak_name}/{sk_name} are a current, permanent AK/SK pair of an IAM "
                                     f"user who may use SWR, and that the login's project ({login_project}) is the "
                                     "AK's: a sub-project goes in --project or swr_project in invoke.yaml")
        pair = _pair(env, *SWR_LOGIN)
        if pair is not None:
            return Credentials(registry=registry, username=pair[0], password=pair[1],
                               source=f"{'/'.join(SWR_LOGIN)} (temporary login)",
                               check=f"a login command from SWR's console expires: generate a new one and set "
                                     f"{SWR_LOGIN[0]} and {SWR_LOGIN[1]} from its -u and -p, or use a permanent "
                                     f"AK/SK ({'/'.join(AK_SK_SOURCES[0][:2])})")
    pair = _pair(env, *REGISTRY_LOGIN)
    if pair is not None:
        return Credentials(registry=registry, username=pair[0], password=pair[1], source="/".join(REGISTRY_LOGIN),
                           check=f"check {REGISTRY_LOGIN[0]} and {REGISTRY_LOGIN[1]}: they must be a user and "
                                 f"password that {registry} knows")
    if skipped:
        raise RegistryError(f"no usable login for {registry}: skipped {'; '.join(skipped)}. Use a permanent AK/SK, "
                            f"or set {'/'.join(SWR_LOGIN)} from SWR's login command")
    return None


def missing_login_hint(registry: str, *, region: str | None = None, project: str | None = None) -> str:
    """What to set when a registry wants a login and none was found."""
    sources = " or ".join(credential_sources(registry, region=region, project=project))
    return f"set {sources} (see docs/guide/push.md: Credentials)"


# --------------------------------------------------------------------------------------------------------------
# References


@dataclass(frozen=True, kw_only=True)
class Reference:
    """registry/organization/repository:tag, split."""

    registry: str
    organization: str
    repository: str
    tag: str

    @classmethod
    def of(cls, image: ImageSpec) -> Reference:
        return cls(registry=image.registry, organization=image.organization, repository=image.repository,
                   tag=image.tag)

    @property
    def name(self) -> str:
        """The repository name in the registry's API: 'organization/repository'."""
        return f"{self.organization}/{self.repository}"

    @property
    def repository_reference(self) -> str:
        """'registry/organization/repository', what `docker push` takes beside the tag."""
        return f"{self.registry}/{self.name}"

    def with_tag(self, tag: str) -> Reference:
        return Reference(registry=self.registry, organization=self.organization, repository=self.repository,
                         tag=tag)

    def __str__(self) -> str:
        return f"{self.repository_reference}:{self.tag}"


def _rule(name: str) -> tuple[re.Pattern[str], int | None, str]:
    """The pattern, maximum length and message of a naming rule, as versions.schema.json states it."""
    schema = config.schema()
    definition = schema["$defs"]["image"]["properties"]["tag"] if name == "tag" else schema["$defs"][name]
    return re.compile(definition["pattern"]), definition.get("maxLength"), definition["x-message"]


def reference_problems(reference: Reference) -> list[str]:
    """Every way the reference breaks SWR's naming rules, as 'part 'value': rule' lines."""
    problems = []
    for part, value in (("registry", reference.registry), ("organization", reference.organization),
                        ("repository", reference.repository), ("tag", reference.tag)):
        pattern, max_length, message = _rule(part)
        if not pattern.match(value) or (max_length is not None and len(value) > max_length):
            problems.append(f"{part} {value!r}: {message}")
    if len(reference.repository_reference) > MAX_NAME_LENGTH:
        problems.append(f"name {reference.repository_reference!r}: must be at most {MAX_NAME_LENGTH} characters "
                        f"(registry/organization/repository; it has {len(reference.repository_reference)})")
    return problems


def validate(reference: Reference) -> Reference:
    """The reference itself, or RegistryError (exit 6) naming every rule it breaks."""
    problems = reference_problems(reference)
    if problems:
        raise RegistryError(f"cannot push {reference}: " + "; ".join(problems))
    return reference


def validate_registry(registry: str) -> str:
    """The registry host itself, or RegistryError when it is not a host name (optionally with :port)."""
    pattern, _, message = _rule("registry")
    if not pattern.match(registry):
        raise RegistryError(f"registry {registry!r}: {message}")
    return registry


def validate_tag(reference: Reference, tag: str) -> Reference:
    """The reference with an extra tag, checked against the tag rule."""
    return validate(reference.with_tag(tag))
