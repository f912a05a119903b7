"""Model store CLI: which version is in production, where it came from, and how to go back.

    python -m airflow_provider_mlpipe.modelstore [--store URI] [--model NAME] [--json] COMMAND ...

    versions                      published versions, newest last, with accuracy and aliases
    show VERSION                  the version's manifest (files, sha256, metrics, image, run, dataset)
    aliases                       where production / staging / previous point now
    history ALIAS                 every change of an alias: version, run, approver, time, reason
    promote VERSION --approved-by WHO [--run-id ID]
    set-alias ALIAS VERSION --reason TEXT [--approved-by WHO] [--run-id ID]
                                  point staging or previous at a version (production: promote / rollback)
    rollback --reason TEXT [--requested-by WHO] [--run-id ID]
    retain --keep N [--grace-hours H] [--dry-run]

The store URI comes from --store or MLPIPE_MODEL_STORE; oss:// stores read OSS_ACCESS_KEY_ID,
OSS_ACCESS_KEY_SECRET, OSS_REGION / OSS_ENDPOINT, or an Airflow connection with --conn-id (needs Airflow).
Exit codes: 0 done, 1 store error, 2 bad arguments or configuration, 3 alias conflict (another writer moved
the alias first: read again and retry if still wanted).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_mlpipe.demo.pipeline import MODEL_NAME as DEFAULT_MODEL_NAME
from airflow_provider_mlpipe.exceptions import AliasConflictError, ConfigError, MlpipeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_provider_mlpipe.modelstore.store import ModelStore

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFLICT = 0, 1, 2, 3
log = logging.getLogger("mlpipe.modelstore")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_mlpipe.modelstore",
        description="Inspect the model store, promote, roll back and prune versions.",
    )
    parser.add_argument(
        "--store", default=os.environ.get("MLPIPE_MODEL_STORE"), help="store URI [env MLPIPE_MODEL_STORE]"
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("MLPIPE_MODEL_NAME", DEFAULT_MODEL_NAME),
        help="model name [env MLPIPE_MODEL_NAME]",
    )
    parser.add_argument("--conn-id", default=None, help="Airflow connection (type oss) for oss:// stores")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("versions", help="published versions")
    show = sub.add_parser("show", help="a version's manifest")
    show.add_argument("version", type=int)
    sub.add_parser("aliases", help="current aliases")
    history = sub.add_parser("history", help="an alias' history")
    history.add_argument("alias")
    promote = sub.add_parser("promote", help="point production at a version")
    promote.add_argument("version", type=int)
    promote.add_argument("--approved-by", required=True)
    promote.add_argument("--run-id", default=None)
    set_alias = sub.add_parser("set-alias", help="point staging or previous at a version")
    set_alias.add_argument("alias")
    set_alias.add_argument("version", type=int)
    set_alias.add_argument("--reason", required=True)
    set_alias.add_argument("--approved-by", default=None)
    set_alias.add_argument("--run-id", default=None)
    rollback = sub.add_parser("rollback", help="move production back to its previous version")
    rollback.add_argument("--reason", required=True)
    rollback.add_argument("--requested-by", default=None)
    rollback.add_argument("--run-id", default=None)
    retain = sub.add_parser("retain", help="delete old versions (never an aliased one)")
    retain.add_argument("--keep", type=int, required=True, help="newest published versions to keep")
    retain.add_argument("--grace-hours", type=float, default=48.0, help="spare unfinished uploads this young")
    retain.add_argument("--dry-run", action="store_true")
    return parser


def _open(args: argparse.Namespace) -> ModelStore:
    from airflow_provider_mlpipe.modelstore.store import open_store

    if not args.store:
        raise ConfigError("--store", args.store, "a store URI (or set MLPIPE_MODEL_STORE)")
    if args.conn_id:
        from airflow_provider_mlpipe.hooks.model_store import ModelStoreHook

        return ModelStoreHook(args.store, oss_conn_id=args.conn_id).store
    return open_store(args.store)


def _cli_run_id() -> str:
    # Alias records say who changed production from where, also when no Airflow run did it.
    return f"cli:{getpass.getuser()}@{socket.gethostname()}:{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def _run(args: argparse.Namespace) -> Any:
    store = _open(args)
    model = args.model
    if args.command == "versions":
        aliased = store.aliased_versions(model)
        rows = []
        for version in store.published_versions(model):
            manifest = store.read_manifest(model, version)
            rows.append(
                {
                    "version": version,
                    "created_at": manifest.get("created_at"),
                    "test_accuracy": (manifest.get("metrics") or {}).get("test_accuracy"),
                    "run_id": manifest.get("run_id"),
                    "aliases": aliased.get(version, []),
                }
            )
        return rows
    if args.command == "show":
        return store.read_manifest(model, args.version)
    if args.command == "aliases":
        from airflow_provider_mlpipe.modelstore.store import ALIASES

        return {alias: store.get_alias(model, alias) for alias in ALIASES}
    if args.command == "history":
        return store.alias_history(model, args.alias)
    if args.command == "promote":
        return store.promote(
            model, args.version, run_id=args.run_id or _cli_run_id(), approved_by=args.approved_by, extra=None
        )
    if args.command == "set-alias":
        if args.alias == "production":
            # promote and rollback also move `previous`; a bare alias change would leave it stale.
            raise ConfigError(
                "ALIAS", args.alias, "staging or previous (production: use promote or rollback)"
            )
        current = store.get_alias(model, args.alias)
        return store.set_alias(
            model,
            args.alias,
            args.version,
            expected_generation=current["generation"] if current else None,
            run_id=args.run_id or _cli_run_id(),
            approved_by=args.approved_by or getpass.getuser(),
            reason=args.reason,
        )
    if args.command == "rollback":
        return store.rollback(
            model,
            run_id=args.run_id or _cli_run_id(),
            requested_by=args.requested_by or getpass.getuser(),
            reason=args.reason,
        )
    if args.command == "retain":
        if args.grace_hours < 0:
            raise ConfigError("--grace-hours", args.grace_hours, "a number >= 0")
        return store.apply_retention(
            model, args.keep, grace=timedelta(hours=args.grace_hours), dry_run=args.dry_run
        )
    raise ConfigError("COMMAND", args.command, "a known command")  # pragma: no cover - argparse refuses it


def _text(command: str, result: Any) -> str:
    if command == "versions":
        if not result:
            return "no published versions"
        return "\n".join(
            f"v{r['version']}  accuracy={r['test_accuracy']}  created={r['created_at']}  run={r['run_id']}"
            + (f"  [{', '.join(r['aliases'])}]" if r["aliases"] else "")
            for r in result
        )
    if command == "aliases":
        return "\n".join(
            f"{alias}: "
            + (
                f"v{rec['version']} (generation {rec['generation']}, run {rec['run_id']}, "
                f"approved by {rec.get('approved_by')}, {rec['updated_at']})"
                if rec
                else "-"
            )
            for alias, rec in result.items()
        )
    if command == "history":
        return (
            "\n".join(
                f"#{r['generation']} v{r['version']}  {r['updated_at']}  run={r['run_id']}  "
                f"by={r.get('approved_by')}  {r.get('reason', '')}"
                for r in result
            )
            or "no history"
        )
    if command in ("promote", "rollback", "set-alias"):
        return f"{result['alias']} -> v{result['version']} (generation {result['generation']}): {result['reason']}"
    if command == "retain":
        verb = "would delete" if result["dry_run"] else "deleted"
        return (
            f"{verb} {result['deleted'] or 'nothing'}; kept newest {result['kept']}; "
            f"protected {result['protected'] or 'none'}"
        )
    return json.dumps(result, indent=2, sort_keys=True, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        result = _run(args)
    except AliasConflictError as err:
        sys.stderr.write(f"modelstore: conflict: {err}\n")
        return EXIT_CONFLICT
    except ConfigError as err:
        sys.stderr.write(f"modelstore: error: {err}\n")
        return EXIT_USAGE
    except MlpipeError as err:
        sys.stderr.write(f"modelstore: error: {err}\n")
        return EXIT_ERROR
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(_text(args.command, result) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
