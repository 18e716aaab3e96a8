"""Job specs (issue 4): examples load, bad fields are named with their line and column, placement
expressions parse and evaluate as documented, and the funded hash ignores formatting only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mesh._jobspec import CarJob, ChainDistJob, Placement, WarJob, spec_hash
from mesh._jobspec_expr import (
    And,
    Compare,
    Expr,
    ExpressionError,
    HasTag,
    Not,
    Or,
    evaluate_expression,
    parse_expression,
    render_expression,
)
from mesh._jobspec_load import SpecError, load_spec, parse_spec
from mesh._wire_capacity import Resources

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# line numbers below are the ones the error tests expect; keep them in step with this text
BASE = textwrap.dedent("""\
    kind: car
    name: web
    replicas: 2
    resources:
      cpu_millis: 250
      memory_mb: 64
    placement:
      include:
        - memory_mb >= 512
    ports:
      - container: 8080
        host: 8080
    health:
      type: http
      port: 8080
    car:
      image: localhost/deedmesh-test-web:1
    """)


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "app.yaml")
    return info.value


def test_base_spec_is_valid_and_defaults_are_filled_in() -> None:
    spec = parse_spec(BASE)
    assert isinstance(spec, CarJob)
    assert spec.resources.gpus == 0
    assert spec.car.pull == "if-missing"
    assert spec.restart.policy == "always"
    assert spec.update.strategy == "rolling"
    assert spec.health is not None
    assert spec.health.interval_s == 10
    assert spec.ports[0].expose is False
    assert isinstance(spec.ports, tuple)  # YAML lists arrive as tuples despite strict mode


@pytest.mark.parametrize(
    ("name", "kind"), [("car-web.yaml", CarJob), ("war-worker.yaml", WarJob), ("war-site.yaml", WarJob),
                     ("chaindist-primes.yaml", ChainDistJob), ("chaindist-wordcount.yaml", ChainDistJob)]
)
def test_every_example_loads(name: str, kind: type) -> None:
    spec = load_spec(EXAMPLES / name)
    assert isinstance(spec, kind)
    assert len(spec_hash(spec)) == 32


def test_the_web_example_is_the_busybox_app() -> None:
    spec = load_spec(EXAMPLES / "car-web.yaml")
    assert isinstance(spec, CarJob)
    assert spec.replicas == 2
    assert spec.ports[0].container == 8080
    assert spec.health is not None
    assert spec.health.type == "http"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: web", "name: Web_App", "app.yaml:2:1: name: must be 1-63 lowercase"),
        ("memory_mb: 64", "memory_mb: -1", "app.yaml:6:3: resources.memory_mb: Input should be greater than 0"),
        ("replicas: 2", "replicas: 2\nreplica: 3", "app.yaml:4:1: replica: Extra inputs are not permitted"),
        ("  port: 8080\n", "  port: 0\n", "app.yaml:15:3: health.port: Input should be greater than or equal to 1"),
        ("type: http", "type: grpc", "app.yaml:14:3: health.type: Input tag 'grpc'"),
        ("  type: http\n  port: 8080\n", "  type: http\n", "app.yaml:13:1: health.port: Field required"),
        ("container: 8080", 'container: "8080"', "app.yaml:11:5: ports.0.container: Input should be a valid integer"),
        ("kind: car", "kind: vm", "app.yaml:1:1: kind: Input tag 'vm'"),
        ("kind: car\n", "", "app.yaml:1:1: kind: Field required (one of car, chaindist, war)"),
        ("car:\n", "war:\n", "app.yaml:16:1: war: a car job takes a car: section, not war:"),
        (
            "  image: localhost/deedmesh-test-web:1\n",
            "  image: localhost/deedmesh-test-web:1\n  command: httpd\n",
            "app.yaml:18:3: car.command: Input should be a list",
        ),
        (
            "    - memory_mb >= 512",
            "    - memory_mb >= 512 and (has gpu",
            "app.yaml:9:7: placement.include.0: column 30: expected ')' to close the '(' at column 22",
        ),
    ],
)
def test_a_bad_field_is_named_with_its_line_and_column(old: str, new: str, expected: str) -> None:
    assert old in BASE
    assert str(error_of(BASE.replace(old, new, 1))).startswith(expected)


def test_a_kind_without_its_section_points_at_kind() -> None:
    text = BASE.replace("kind: car", "kind: war")
    assert str(error_of(text)).startswith("app.yaml:16:1: car: a war job takes a war: section, not car:")
    without = BASE.split("car:\n")[0]
    assert str(error_of(without)).startswith("app.yaml:1:1: kind: a car job needs a car: section")


def test_an_inline_password_is_refused_and_never_echoed() -> None:
    text = BASE + "  registry_auth:\n    username: bob\n    password: hunter2\n"
    error = error_of(text)
    assert str(error).startswith("app.yaml:20:5: car.registry_auth.password: inline passwords are refused")
    assert "hunter2" not in str(error)
    assert error.__cause__ is None  # no chained ValidationError printing it
    assert error.__suppress_context__


def test_a_password_reference_is_accepted() -> None:
    spec = parse_spec(BASE + "  registry_auth:\n    username: bob\n    password_env: REGISTRY_PASSWORD\n")
    assert isinstance(spec, CarJob)
    assert spec.car.registry_auth is not None
    assert spec.car.registry_auth.password_env == "REGISTRY_PASSWORD"
    both = BASE + "  registry_auth:\n    username: bob\n    password_env: P\n    password_file: /run/p\n"
    assert "car.registry_auth.password_env: give exactly one" in str(error_of(both))


def test_a_duplicate_key_is_an_error_at_the_second_one() -> None:
    error = error_of(BASE.replace("  memory_mb: 64", "  memory_mb: 64\n  memory_mb: 128"))
    assert str(error) == "app.yaml:7:3: resources.memory_mb: duplicate key (first given at line 6)"


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_an_empty_file_is_an_error(text: str) -> None:
    assert str(error_of(text)).startswith("app.yaml: the spec is empty")


def test_a_document_that_is_not_a_mapping_is_an_error() -> None:
    assert str(error_of("- kind: car\n")) == "app.yaml:1:1: the spec must be a mapping, not a sequence"
    assert str(error_of("just text\n")) == "app.yaml:1:1: the spec must be a mapping, not a scalar"


def test_python_tags_and_broken_yaml_are_refused_with_a_position() -> None:
    assert str(error_of(BASE + "x: !!python/object/apply:os.system [id]\n")).startswith("app.yaml:18:4: invalid YAML")
    assert str(error_of(BASE + "x: [1, 2\n")).startswith("app.yaml:19:1: invalid YAML")


def test_every_error_is_listed_and_the_message_is_one_line() -> None:
    text = BASE.replace("replicas: 2", "replicas: 0").replace("memory_mb: 64", "memory_mb: -1")
    error = error_of(text.replace("name: web", "name: Web"))
    assert str(error).startswith("app.yaml:2:1: name: ")
    assert str(error).endswith("(and 2 more errors)")
    assert [issue.path for issue in error.issues] == ["name", "replicas", "resources.memory_mb"]
    assert [issue.line for issue in error.issues] == [2, 3, 6]


def test_a_value_with_a_newline_keeps_the_message_on_one_line() -> None:
    message = str(error_of('kind: "x\\ny"\n'))
    assert "\n" not in message
    assert "x\\ny" in message


def test_load_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(BASE.replace("memory_mb: 64", "memory_mb: 0"))
    with pytest.raises(SpecError, match=r"app\.yaml:6:3: resources\.memory_mb: "):
        load_spec(path)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("restart:\n  backoff: {initial_s: 10, max_s: 5}\n", "restart.backoff.initial_s: initial_s must not exceed"),
        ("restart:\n  backoff: {multiplier: 0.5}\n", "restart.backoff.multiplier: Input should be greater"),
        ("update: {strategy: rolling, max_unavailable: 0, max_surge: 0}\n", "update.max_surge: max_unavailable and"),
        ("update: {max_surge: 2}\n", "update.strategy: Field required (one of recreate, rolling)"),
        ("ports:\n  - {container: 80, expose: true}\n", "ports.0.expose: expose: true needs a host port"),
        ("env:\n  BAD-NAME: x\n", "env.BAD-NAME: String should match pattern"),
        ("env:\n  N: 5\n", "env.N: Input should be a valid string"),
        ("health: {type: http, port: 80, timeout_s: 20}\n", "health.timeout_s: timeout_s must not exceed interval_s"),
        ("health: {type: command, argv: []}\n", "health.argv: Value should have at least 1 item"),
        ("ports: [{container: 53, protocol: udp}]\n", "update: a car job with a udp port is updated in place"),
        ("update: {strategy: rolling, progress_deadline_s: 1}\n", "update.progress_deadline_s: Input should be"),
    ],
)
def test_common_section_rules(section: str, expected: str) -> None:
    text = BASE.split("ports:\n")[0] + "car:\n  image: web:1\n" + section
    assert expected in str(error_of(text))


def test_a_car_job_with_a_udp_port_takes_an_unavailable_budget_or_recreate() -> None:
    udp = BASE.split("ports:\n")[0] + "car:\n  image: web:1\nports: [{container: 53, protocol: udp}]\n"
    assert parse_spec(udp + "update: {strategy: rolling, max_unavailable: 1}\n")
    assert parse_spec(udp + "update: {strategy: recreate}\n")


def test_war_and_chaindist_rules() -> None:
    war = ("kind: war\nname: w\nresources: {cpu_millis: 1, memory_mb: 1}\n"
           "war:\n  image: t:1\n  repo: {repo}\n  run: [x]\n")
    assert parse_spec(war.replace("{repo}", "git@example.org:a/b.git"))
    assert "war.repo: " in str(error_of(war.replace("{repo}", "--upload-pack=touch")))
    assert "war.repo: " in str(error_of(war.replace("{repo}", "relative/path")))
    assert "war.image: Field required" in str(error_of(war.replace("  image: t:1\n", "").replace("{repo}", "/r")))
    assert "ports: a war job's ports are tcp" in str(
        error_of(war.replace("{repo}", "/r") + "ports: [{container: 53, protocol: udp}]\n"))
    assert "war.poll_s: Input should be greater than or equal to 1" in str(
        error_of(war.replace("{repo}", "/r") + "  poll_s: 0\n"))
    chain = "kind: chaindist\nname: c\nresources: {cpu_millis: 1, memory_mb: 1}\nchaindist:\n"
    assert "chaindist.worker.image: a worker needs an image (shards run in containers)" in str(
        error_of(chain + "  shards: 2\n  worker: {}\n  aggregate: [cat]\n")
    )
    assert "chaindist.shards: Input should be greater than or equal to 1" in str(
        error_of(chain + "  shards: 0\n  worker: {image: w:1}\n  aggregate: [cat]\n")
    )


# --- placement expressions -----------------------------------------------------------------


def node(cpu: int = 4000, mem: int = 8192, gpus: int = 0, disk: int = 0) -> Resources:
    return Resources(cpu_millis=cpu, memory_mb=mem, gpus=gpus, disk_mb=disk)


def test_precedence_is_not_then_and_then_or() -> None:
    assert parse_expression("has a or has b and not has c") == Or(
        (HasTag("a"), And((HasTag("b"), Not(HasTag("c")))))
    )
    assert parse_expression("(has a or has b) and gpus >= 1") == And(
        (Or((HasTag("a"), HasTag("b"))), Compare("gpus", ">=", 1))
    )
    assert parse_expression('not not has "region=eu west"') == Not(Not(HasTag("region=eu west")))


@pytest.mark.parametrize(
    ("text", "tags", "total", "expected"),
    [
        ("has gpu", {"gpu"}, node(), True),
        ("has gpu", set(), node(), False),
        ("cpu_millis >= 4000 and memory_mb < 8193", set(), node(), True),
        ("cpu_millis > 4000", set(), node(), False),
        ("has a or has b and has c", {"a"}, node(), True),  # or binds loosest
        ("(has a or has b) and has c", {"a"}, node(), False),
        ("not has a and has b", {"b"}, node(), True),  # not binds tightest
        ("not (has a and has b)", {"a", "b"}, node(), False),
        ("gpus == 2 or disk_mb != 0", set(), node(gpus=2), True),
        ("gpus <= 1", set(), node(gpus=2), False),
    ],
)
def test_evaluation(text: str, tags: set[str], total: Resources, expected: bool) -> None:
    assert evaluate_expression(parse_expression(text), frozenset(tags), total) is expected


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("has", 4, "expected a tag"),
        ("has and", 5, "expected a tag"),
        ("gpus >= two", 9, "expected a non-negative integer"),
        ("gpus 2", 6, "expected a comparison"),
        ("ram > 1", 1, "expected '(', 'not', 'has'"),
        ("has a has b", 7, "expected 'and', 'or' or the end"),
        ("(has a", 7, "expected ')'"),
        ('has "gpu', 5, "unterminated string"),
        ("has a && has b", 7, "unexpected character '&'"),
        ("__import__('os')", 12, "unexpected character"),
        ("not " * 40 + "has a", 129, "nested deeper than 32"),
    ],
)
def test_parse_errors_give_the_column(text: str, column: int, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert info.value.column == column
    assert info.value.reason.startswith(reason)
    assert str(info.value).startswith(f"column {column}: {reason}")


def test_placement_matches_tags_includes_and_excludes() -> None:
    placement = Placement.model_validate(
        {"tags": ["linux", "x86"], "include": ["memory_mb >= 1024"], "exclude": ["has draining"]}
    )
    assert placement.matches(frozenset({"linux", "x86", "ssd"}), node())
    assert not placement.matches(frozenset({"linux"}), node())  # a required tag is missing
    assert not placement.matches(frozenset({"linux", "x86"}), node(mem=512))  # an include is false
    assert not placement.matches(frozenset({"linux", "x86", "draining"}), node())  # an exclude is true
    assert Placement().matches(frozenset(), node(cpu=0, mem=0))


def tags_() -> st.SearchStrategy[str]:
    bare = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,20}", fullmatch=True)
    quoted = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters='"\x7f'), min_size=1)
    return bare | quoted.filter(lambda t: len(t) <= 64)


def expressions() -> st.SearchStrategy[Expr]:
    leaves = st.builds(HasTag, tags_()) | st.builds(
        Compare,
        st.sampled_from(["cpu_millis", "memory_mb", "gpus", "disk_mb"]),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
        st.integers(0, 10**12),
    )
    return st.recursive(
        leaves,
        lambda inner: st.builds(Not, inner)
        | st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple))
        | st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        max_leaves=12,
    )


@given(expressions())
def test_rendering_round_trips(expr: Expr) -> None:
    text = render_expression(expr)
    assert parse_expression(text) == expr
    assert render_expression(parse_expression(text)) == text


# --- the funded hash -----------------------------------------------------------------------


def test_formatting_comments_and_written_defaults_hash_the_same() -> None:
    reformatted = textwrap.dedent("""\
        # the same job, written differently
        name: "web"
        kind: 'car'
        car: {image: localhost/deedmesh-test-web:1, pull: if-missing}   # the default pull policy
        resources: {memory_mb: 64, cpu_millis: 250, gpus: 0}
        replicas: 2
        placement:
          include: ["memory_mb   >=   512"]
          tags: []
        ports: [{container: 8080, host: 8080, protocol: tcp}]
        health: {port: 8080, type: http, interval_s: 10}
        restart: {policy: always}
        """)
    assert spec_hash(parse_spec(reformatted)) == spec_hash(parse_spec(BASE))


@pytest.mark.parametrize(
    ("old", "new"), [("replicas: 2", "replicas: 3"), ("memory_mb >= 512", "memory_mb > 512"), ("web:1", "web:2")]
)
def test_a_real_change_changes_the_hash(old: str, new: str) -> None:
    assert spec_hash(parse_spec(BASE.replace(old, new))) != spec_hash(parse_spec(BASE))


@given(
    flow=st.booleans(), sort_keys=st.booleans(), indent=st.integers(2, 6), width=st.integers(20, 200),
    name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
)
def test_any_yaml_rendering_of_a_spec_hashes_the_same(flow: bool, sort_keys: bool, indent: int, width: int,
                                                      name: str) -> None:
    spec = parse_spec(BASE.replace("name: web", f"name: {name!r}"))
    dumped = yaml.safe_dump(spec.model_dump(mode="json"), default_flow_style=flow, sort_keys=sort_keys,
                            indent=indent, width=width)
    assert spec_hash(parse_spec(dumped)) == spec_hash(spec)
