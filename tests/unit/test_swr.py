"""SWR naming and credentials (pure), and publish's pure helpers: extra tags, git revision (now in frontend), the
record file. Masking secrets (once swr.mask) is tested with shared/redact.py in test_redact.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from modelarts_images import frontend
from modelarts_images.config import versions as config
from modelarts_images.config.tag_templates import expand_tags
from modelarts_images.errors import ConfigError, RegistryError, WriteError
from modelarts_images.publish import publisher as publish
from modelarts_images.publish import swr
from modelarts_images.shared.credentials import Credentials

SWR_HOST = "swr.cn-north-4.myhuaweicloud.com"
# Test values in the shape of real ones: a 20-character AK and a 40-character SK.
AK = "HPUAEXAMPLEACCESSKEY"
SK = "ExampleSecretKey0123456789abcdefEXAMPLE1"


def openssl_hmac(key: str, message: str) -> str:
    """HMAC-SHA256 of `message` keyed by `key`, hex, computed by openssl (not by Python's hmac)."""
    result = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", key], input=message.encode(),
                            capture_output=True, check=True)
    return result.stdout.decode().strip().rsplit(" ", 1)[-1]


# --------------------------------------------------------------------------------------------------------------
# Login key and region


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize(("access_key", "secret_key"), [(AK, SK), ("A", "B"), ("AK with spaces", "sk-ü-ñ")])
def test_login_key_matches_openssl(access_key: str, secret_key: str) -> None:
    expected = openssl_hmac(secret_key, access_key)
    assert len(expected) == 64
    assert swr.login_key(access_key, secret_key) == expected


def test_login_key_is_lowercase_hex_of_ak_keyed_by_sk() -> None:
    key = swr.login_key(AK, SK)
    assert key == key.lower() and len(key) == 64
    assert key != swr.login_key(SK, AK)  # the roles are not interchangeable


@pytest.mark.parametrize(("host", "region"), [
    ("swr.cn-north-4.myhuaweicloud.com", "cn-north-4"),
    ("swr.ap-southeast-1.myhuaweicloud.com", "ap-southeast-1"),
    ("swr.cn-southwest-2.myhuaweicloud.com", "cn-southwest-2"),
    ("swr.eu-west-101.myhuaweicloud.eu", "eu-west-101"),
    ("swr.cn-east-3.myhuaweicloud.com:443", "cn-east-3"),
    ("SWR.CN-NORTH-4.MYHUAWEICLOUD.COM", "cn-north-4"),
    ("127.0.0.1:5000", None),
    ("registry.example.com", None),
    ("swr.myhuaweicloud.com", None),
    ("swr.cn-north-4.myhuaweicloud.com.evil.example", None),
    ("xswr.cn-north-4.myhuaweicloud.com", None),
])
def test_region_of(host: str, region: str | None) -> None:
    assert swr.region_of(host) == region


# --------------------------------------------------------------------------------------------------------------
# Credential sources


def test_sdk_names_come_first() -> None:
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK, "HW_ACCESS_KEY": "OTHERAK", "HW_SECRET_KEY": "x",
           "MODELARTS_SWR_LOGIN_USER": "u", "MODELARTS_SWR_LOGIN_PASSWORD": "p",
           "MODELARTS_REGISTRY_USER": "u2", "MODELARTS_REGISTRY_PASSWORD": "p2"}
    found = swr.resolve_credentials(SWR_HOST, env)
    assert found is not None
    assert found.username == f"cn-north-4@{AK}"
    assert found.password == swr.login_key(AK, SK)
    assert found.source == "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (long-term login)"
    assert found.registry == SWR_HOST


def test_terraform_names_second() -> None:
    env = {"HW_ACCESS_KEY": AK, "HW_SECRET_KEY": SK, "MODELARTS_SWR_LOGIN_USER": "u",
           "MODELARTS_SWR_LOGIN_PASSWORD": "p"}
    found = swr.resolve_credentials("swr.ap-southeast-1.myhuaweicloud.com", env)
    assert found is not None
    assert found.username == f"ap-southeast-1@{AK}"
    assert found.password == swr.login_key(AK, SK)
    assert found.source.startswith("HW_ACCESS_KEY/HW_SECRET_KEY")


def test_temporary_login_third_then_plain_login() -> None:
    temporary = {"MODELARTS_SWR_LOGIN_USER": f"cn-north-4@{AK}", "MODELARTS_SWR_LOGIN_PASSWORD": "token-123",
                 "MODELARTS_REGISTRY_USER": "u2", "MODELARTS_REGISTRY_PASSWORD": "p2"}
    found = swr.resolve_credentials(SWR_HOST, temporary)
    assert found is not None and (found.username, found.password) == (f"cn-north-4@{AK}", "token-123")
    assert "temporary" in found.source
    plain = {"MODELARTS_REGISTRY_USER": "u2", "MODELARTS_REGISTRY_PASSWORD": "p2"}
    found = swr.resolve_credentials(SWR_HOST, plain)
    assert found is not None and (found.username, found.password, found.source) == (
        "u2", "p2", "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD")


def test_nothing_set_is_none() -> None:
    assert swr.resolve_credentials(SWR_HOST, {}) is None
    assert swr.resolve_credentials(SWR_HOST, {"HUAWEICLOUD_SDK_AK": "", "HUAWEICLOUD_SDK_SK": ""}) is None


def test_ak_sk_never_go_to_another_registry() -> None:
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK, "MODELARTS_SWR_LOGIN_USER": "u",
           "MODELARTS_SWR_LOGIN_PASSWORD": "p"}
    assert swr.resolve_credentials("registry.example.com", env) is None
    found = swr.resolve_credentials("registry.example.com",
                                    {**env, "MODELARTS_REGISTRY_USER": "me", "MODELARTS_REGISTRY_PASSWORD": "pw"})
    assert found is not None and found.username == "me"


def test_explicit_region_makes_any_host_swr() -> None:
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    found = swr.resolve_credentials("127.0.0.1:5000", env, region="cn-north-4")
    assert found is not None and found.username == f"cn-north-4@{AK}"


def test_region_must_agree_with_the_host() -> None:
    with pytest.raises(RegistryError, match=r"does not match the registry .* which is in cn-north-4"):
        swr.resolve_credentials(SWR_HOST, {}, region="cn-east-3")
    with pytest.raises(RegistryError, match=r"not a Huawei Cloud region"):
        swr.resolve_credentials(SWR_HOST, {}, region="north")


def test_a_sub_project_names_the_long_term_login() -> None:
    # SWR's long-term login user is `<project name>@<AK>`; the region's name only for its default project
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    found = swr.resolve_credentials(SWR_HOST, env, project="cn-north-4_team")
    assert found is not None and found.username == f"cn-north-4_team@{AK}"
    assert found.password == swr.login_key(AK, SK)  # the key does not depend on the project
    assert found.shown_user == f"cn-north-4_team@{AK[:4]}…" and AK in found.secrets
    assert found.hide(f"denied for cn-north-4_team@{AK}") == f"denied for cn-north-4_team@{AK[:4]}…"
    default = swr.resolve_credentials(SWR_HOST, env, project="cn-north-4")
    assert default is not None and default.username == f"cn-north-4@{AK}"
    # a project makes a loopback registry SWR in its region, like --region
    local = swr.resolve_credentials("127.0.0.1:5000", env, project="cn-north-4_team")
    assert local is not None and local.username == f"cn-north-4_team@{AK}"


@pytest.mark.parametrize(("project", "message"), [
    ("cn-east-3_team", "project 'cn-east-3_team' belongs to region cn-east-3, but the registry is in cn-north-4"),
    ("team", "project 'team' is not a Huawei Cloud project name: the region's own (cn-north-4) or a sub-project's "
             "(cn-north-4_<name>"),
    ("cn-north-4_bad name", "project 'cn-north-4_bad name' is not a Huawei Cloud project name"),
])
def test_a_project_that_cannot_be_is_refused(project: str, message: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(message)) as caught:
        swr.resolve_credentials(SWR_HOST, {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}, project=project)
    assert caught.value.exit_code == 6
    with pytest.raises(RegistryError, match="project 'team' is not a Huawei Cloud project name such as cn-north-4"):
        swr.resolve_credentials("127.0.0.1:5000", {}, project="team")


def test_half_set_pair_names_the_missing_variable() -> None:
    with pytest.raises(RegistryError, match=r"HUAWEICLOUD_SDK_AK is set but HUAWEICLOUD_SDK_SK is not") as caught:
        swr.resolve_credentials(SWR_HOST, {"HUAWEICLOUD_SDK_AK": AK})
    assert caught.value.exit_code == 6
    with pytest.raises(RegistryError, match=r"MODELARTS_REGISTRY_PASSWORD is set but MODELARTS_REGISTRY_USER"):
        swr.resolve_credentials("registry.example.com", {"MODELARTS_REGISTRY_PASSWORD": "pw"})


def test_temporary_ak_sk_is_skipped() -> None:
    temporary = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK, "HUAWEICLOUD_SDK_SECURITY_TOKEN": "sts"}
    with pytest.raises(RegistryError, match=r"temporary AK/SK.*HUAWEICLOUD_SDK_SECURITY_TOKEN is set") as caught:
        swr.resolve_credentials(SWR_HOST, temporary)
    assert SK not in str(caught.value)
    found = swr.resolve_credentials(SWR_HOST, {**temporary, "HW_ACCESS_KEY": "PERMANENT", "HW_SECRET_KEY": SK})
    assert found is not None and found.username == "cn-north-4@PERMANENT"


def test_sources_listed_for_messages() -> None:
    assert swr.credential_sources(SWR_HOST) == (
        "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK", "HW_ACCESS_KEY/HW_SECRET_KEY",
        "MODELARTS_SWR_LOGIN_USER/MODELARTS_SWR_LOGIN_PASSWORD", "MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD")
    assert swr.credential_sources("127.0.0.1:5000") == ("MODELARTS_REGISTRY_USER/MODELARTS_REGISTRY_PASSWORD",)
    assert "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK" in swr.missing_login_hint(SWR_HOST)


# --------------------------------------------------------------------------------------------------------------
# Secrets stay hidden


def test_repr_and_str_never_show_the_password() -> None:
    found = swr.resolve_credentials(SWR_HOST, {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK})
    assert found is not None
    for text in (repr(found), str(found), f"{found}", f"{found!r}", repr([found]), repr({"c": found})):
        assert found.password not in text
        assert SK not in text
        assert AK not in text  # the AK is cut to its first characters
        assert "***" in text
    assert found.shown_user == "cn-north-4@HPUA…"
    assert found.secrets == (found.password, AK)


def test_a_message_quoting_the_user_shows_the_ak_cut() -> None:
    found = swr.resolve_credentials(SWR_HOST, {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK})
    assert found is not None
    quoted = f"unauthorized: user {found.username} may not push; key {AK}; password {found.password}"
    assert found.hide(quoted) == "unauthorized: user cn-north-4@HPUA… may not push; key ***; password ***"
    plain = swr.resolve_credentials("registry.example.com", {"MODELARTS_REGISTRY_USER": "robot",
                                                              "MODELARTS_REGISTRY_PASSWORD": "pw-123456"})
    assert plain is not None and plain.secrets == ("pw-123456",)
    assert plain.hide("robot: pw-123456 refused") == "robot: *** refused"


def test_credentials_are_frozen() -> None:
    found = Credentials(registry="r", username="u", password="p", source="s")
    with pytest.raises(AttributeError):
        found.password = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------
# Reference validation


def ref(registry: str = SWR_HOST, organization: str = "deep-learning-demo", repository: str = "pytorch",
        tag: str = "1.8.1-cuda10.2") -> swr.Reference:
    return swr.Reference(registry=registry, organization=organization, repository=repository, tag=tag)


def test_valid_reference_passes_and_prints_as_docker_does() -> None:
    reference = swr.validate(ref())
    assert str(reference) == f"{SWR_HOST}/deep-learning-demo/pytorch:1.8.1-cuda10.2"
    assert reference.name == "deep-learning-demo/pytorch"
    assert reference.repository_reference == f"{SWR_HOST}/deep-learning-demo/pytorch"
    assert str(reference.with_tag("x")) == f"{SWR_HOST}/deep-learning-demo/pytorch:x"


@pytest.mark.parametrize(("reference", "part", "rule_words"), [
    (ref(organization="Deep-Learning"), "organization 'Deep-Learning'", "starting with a letter"),
    (ref(organization="1demo"), "organization '1demo'", "SWR's organization rule"),
    (ref(organization="demo-"), "organization 'demo-'", "organization rule"),
    (ref(organization="a" * 65), "organization 'aaaa", "1-64 characters"),
    (ref(repository="PyTorch"), "repository 'PyTorch'", "lowercase letters and digits"),
    (ref(repository="py torch"), "repository 'py torch'", "lowercase"),
    (ref(tag=".hidden"), "tag '.hidden'", "not starting with '.' or '-'"),
    (ref(tag="-x"), "tag '-x'", "SWR's tag rule"),
    (ref(tag="a" * 129), "tag 'aaaa", "1-128 characters"),
    (ref(tag="1.8.1+cu102"), "tag '1.8.1+cu102'", "letters, digits"),
    (ref(registry="https://swr.cn-north-4.myhuaweicloud.com"), "registry 'https://", "without a scheme"),
])
def test_invalid_reference_names_part_and_rule(reference: swr.Reference, part: str, rule_words: str) -> None:
    with pytest.raises(RegistryError) as caught:
        swr.validate(reference)
    message = str(caught.value)
    assert caught.value.exit_code == 6
    assert message.startswith(f"cannot push {reference}: ")
    assert part in message
    assert rule_words in message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RegistryError) as caught:
        swr.validate(ref(organization="Org", tag=".t"))
    assert "organization 'Org'" in str(caught.value) and "tag '.t'" in str(caught.value)


def test_overlong_name_is_refused() -> None:
    long_repository = "/".join(["r" * 60] * 4)
    with pytest.raises(RegistryError, match=r"at most 255 characters"):
        swr.validate(ref(repository=long_repository))


def test_rules_come_from_the_schema() -> None:
    # The organization rule is the schema's own: a change there reaches validation without a second copy.
    definition = config.schema()["$defs"]["organization"]
    assert swr._rule("organization")[0].pattern == definition["pattern"]
    assert swr._rule("tag")[2] == config.schema()["$defs"]["image"]["properties"]["tag"]["x-message"]


def test_validate_registry_and_tag() -> None:
    assert swr.validate_registry("127.0.0.1:5000") == "127.0.0.1:5000"
    with pytest.raises(RegistryError, match=r"registry 'swr/x'"):
        swr.validate_registry("swr/x")
    with pytest.raises(RegistryError, match=r"tag 'bad tag'"):
        swr.validate_tag(ref(), "bad tag")


# --------------------------------------------------------------------------------------------------------------
# publish's pure helpers


def test_expand_tags() -> None:
    tags = expand_tags(["{tag}-{date}", "{revision}", "latest", "{tag}", "{tag}-{date}"],
                               tag="2.1.2-cuda12.1", date="20240601", revision="0123456789ab")
    assert tags == ("2.1.2-cuda12.1-20240601", "0123456789ab", "latest")


def test_expand_tags_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{sha\}; use \{tag\}, \{date\}, \{revision\}"):
        expand_tags(["{sha}"], tag="t", date="d", revision=None)
    with pytest.raises(ConfigError, match=r"no git revision"):
        expand_tags(["{revision}"], tag="t", date="d", revision=None)
    with pytest.raises(ConfigError, match=r"extra tag '\{tag'"):
        expand_tags(["{tag"], tag="t", date="d", revision=None)


@pytest.mark.parametrize(("template", "shown", "why"), [
    ("{date:%Y}", "{date:%Y}", "has a format spec or conversion"),
    ("{tag!z}", "{tag!z}", "has a format spec or conversion"),
    ("v{tag!r}", "{tag!r}", "has a format spec or conversion"),
    ("{date:{tag}}", "{date:{tag}}", "has a format spec or conversion"),
    ("{tag[0]}", "{tag[0]}", "unknown placeholder"),
    ("{tag.upper}", "{tag.upper}", "unknown placeholder"),
    ("{}", "{}", "unknown placeholder"),
    ("{0}", "{0}", "unknown placeholder"),
])
def test_expand_tags_takes_only_plain_fields(template: str, shown: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        expand_tags([template], tag="t", date="20240601", revision="0123456789ab")
    message = str(raised.value)
    assert message.startswith(f"extra tag {template!r}: ") and f"{why}" in message and shown in message
    assert message.endswith("use {tag}, {date}, {revision} (plain, without a format spec or conversion)")


def test_git_revision_reads_branch_packed_and_detached(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert frontend.git_revision(tmp_path) == sha[:12]
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{'f' * 40} refs/heads/other\n{sha} refs/heads/main\n")
    assert frontend.git_revision(tmp_path) == sha[:12]
    (git / "HEAD").write_text(sha + "\n")
    assert frontend.git_revision(tmp_path, length=40) == sha
    assert frontend.git_revision(tmp_path / "nowhere") is None


def test_git_revision_of_a_worktree(tmp_path: Path) -> None:
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    common = tmp_path / "main" / ".git"
    worktree_git = common / "worktrees" / "wt"
    worktree_git.mkdir(parents=True)
    (common / "refs" / "heads").mkdir(parents=True)
    (common / "refs" / "heads" / "feature").write_text(sha)
    (worktree_git / "HEAD").write_text("ref: refs/heads/feature\n")
    (worktree_git / "commondir").write_text("../..\n")
    checkout = tmp_path / "wt"
    checkout.mkdir()
    (checkout / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert frontend.git_revision(checkout) == sha[:12]


def test_write_record(tmp_path: Path) -> None:
    tag = publish.TagOutcome(reference="r/o/p:t", digest="sha256:" + "a" * 64, outcome=publish.Outcome.PUSHED,
                             previous_digest=None)
    record = publish.PushRecord(
        id="img", reference="r/o/p:t", digest=tag.digest, size=123, image_id="sha256:" + "b" * 64, image_size=456,
        media_type="application/vnd.docker.distribution.manifest.v2+json", outcome=publish.Outcome.PUSHED, tags=(tag,),
        time=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc).isoformat(), login="MODELARTS_REGISTRY_USER/...",
        record=None)
    path = publish.write_record(record, tmp_path / "reports")
    assert path == tmp_path / "reports" / "push-img.json"
    document = json.loads(path.read_text())
    assert document["reference"] == "r/o/p:t" and document["digest"] == tag.digest and document["size"] == 123
    assert document["outcome"] == "pushed"
    assert document["time"] == "2024-06-01T00:00:00+00:00"
    assert document["tags"] == [{"reference": "r/o/p:t", "digest": tag.digest, "outcome": "pushed",
                                 "previous_digest": None, "layers_sent": 0, "layers_there": 0, "bytes_sent": 0}]
    assert "record" not in document
    assert not list((tmp_path / "reports").glob("*.tmp"))
    assert "pushed  r/o/p:t  sha256:aaaa" in publish.summary([record])
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    # A WriteError: the publisher says the push went through (RegistryError, see test_registry.py), the pipeline's
    # steps make it their stage's error.
    expected = f"cannot write the push record {tmp_path / 'blocker' / 'reports' / 'push-img.json'}: "
    with pytest.raises(WriteError, match=re.escape(expected)):
        publish.write_record(record, tmp_path / "blocker" / "reports")
    (tmp_path / "reports" / "push-other.json").mkdir()  # the replace fails: the temporary file goes too
    with pytest.raises(WriteError, match=r"push-other\.json"):
        publish.write_record(dataclasses.replace(record, id="other"), tmp_path / "reports")
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == ["push-img.json", "push-other.json"]
