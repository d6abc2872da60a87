"""`tuneyard projects`: projects, their keys and limits, through the gateway's
administration API (an admin key). A new key's value is printed once, on stdout alone, so
`tuneyard projects keys create ... > key.txt` keeps it and nothing else."""

import argparse
import json
import sys

from tuneyard.client import GatewayClient

LIMIT_OPTIONS = {
    "requests_per_minute": "max_requests_per_1_minute",
    "tokens_per_minute": "max_tokens_per_1_minute",
    "concurrent_jobs": "max_concurrent_jobs",
    "trained_tokens_per_day": "max_trained_tokens_per_1_day",
}


def _show(obj) -> None:
    print(json.dumps(obj, indent=2))


def _new_key(account: dict) -> int:
    key = account["api_key"]
    print(f"created key {key['id']} for {account['name']} ({account['id']})", file=sys.stderr)
    print(key["value"])
    return 0


def cmd_create(args, client: GatewayClient) -> int:
    _show(client.organization("POST", "/projects", {"name": args.name}))
    return 0


def cmd_list(args, client: GatewayClient) -> int:
    query = "?limit=100" + ("&include_archived=true" if args.archived else "")
    for project in client.organization("GET", "/projects" + query)["data"]:
        print(f"{project['id']}\t{project['status']}\t{project['name']}")
    return 0


def cmd_rename(args, client: GatewayClient) -> int:
    _show(client.organization("POST", f"/projects/{args.project}", {"name": args.name}))
    return 0


def cmd_archive(args, client: GatewayClient) -> int:
    _show(client.organization("POST", f"/projects/{args.project}/archive"))
    return 0


def cmd_key_create(args, client: GatewayClient) -> int:
    path = f"/projects/{args.project}/service_accounts"
    return _new_key(client.organization("POST", path, {"name": args.name}))


def cmd_key_list(args, client: GatewayClient) -> int:
    for key in client.organization("GET", f"/projects/{args.project}/api_keys?limit=100")["data"]:
        owner = key["owner"]["service_account"]
        print(f"{key['id']}\t{key['redacted_value']}\t{owner['name']} ({owner['id']})")
    return 0


def cmd_key_revoke(args, client: GatewayClient) -> int:
    _show(client.organization("DELETE", f"/projects/{args.project}/api_keys/{args.key}"))
    return 0


def cmd_key_rotate(args, client: GatewayClient) -> int:
    """A new key for the same service account name, then the old one revoked: the old key
    works until this returns, so clients can move over in between if they read the new one
    first."""
    keys = client.organization("GET", f"/projects/{args.project}/api_keys?limit=100")["data"]
    old = next((k for k in keys if k["id"] == args.key), None)
    if old is None:
        print(f"error: no key {args.key} in project {args.project}", file=sys.stderr)
        return 2
    owner = old["owner"]["service_account"]
    account = client.organization(
        "POST", f"/projects/{args.project}/service_accounts", {"name": owner["name"]}
    )
    client.organization("DELETE", f"/projects/{args.project}/service_accounts/{owner['id']}")
    print(f"revoked {old['id']} ({owner['id']})", file=sys.stderr)
    return _new_key(account)


def cmd_limits(args, client: GatewayClient) -> int:
    changes = {
        field: getattr(args, option)
        for option, field in LIMIT_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if args.rate_limit and changes:
        path = f"/projects/{args.project}/rate_limits/{args.rate_limit}"
        _show(client.organization("POST", path, changes))
        return 0
    _show(client.organization("GET", f"/projects/{args.project}/rate_limits")["data"])
    return 0


def add_projects_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("projects", help="projects, their API keys and limits (admin key)")
    sub = p.add_subparsers(dest="projects_command", required=True)

    c = sub.add_parser("create", help="create a project")
    c.add_argument("name")
    c.set_defaults(func=cmd_create)
    c = sub.add_parser("list", help="list projects")
    c.add_argument("--archived", action="store_true", help="archived ones too")
    c.set_defaults(func=cmd_list)
    c = sub.add_parser("rename", help="rename a project")
    c.add_argument("project")
    c.add_argument("name")
    c.set_defaults(func=cmd_rename)
    c = sub.add_parser("archive", help="archive a project: its keys stop working")
    c.add_argument("project")
    c.set_defaults(func=cmd_archive)

    keys = sub.add_parser("keys", help="a project's API keys").add_subparsers(
        dest="keys_command", required=True
    )
    c = keys.add_parser("create", help="a new service account and its key (printed once)")
    c.add_argument("project")
    c.add_argument("--name", default="cli", help="the service account's name")
    c.set_defaults(func=cmd_key_create)
    c = keys.add_parser("list", help="the project's keys, redacted")
    c.add_argument("project")
    c.set_defaults(func=cmd_key_list)
    c = keys.add_parser("revoke", help="delete a key: its next request is 401")
    c.add_argument("project")
    c.add_argument("key", help="the key's id (key_...)")
    c.set_defaults(func=cmd_key_revoke)
    c = keys.add_parser("rotate", help="a new key for the same service account, the old revoked")
    c.add_argument("project")
    c.add_argument("key", help="the key's id (key_...)")
    c.set_defaults(func=cmd_key_rotate)

    c = sub.add_parser("limits", help="show a project's rate limits, or set one")
    c.add_argument("project")
    c.add_argument("rate_limit", nargs="?", default="", help="rl-<model> or rl-fine-tuning")
    for option in LIMIT_OPTIONS:
        c.add_argument("--" + option.replace("_", "-"), dest=option, type=int)
    c.set_defaults(func=cmd_limits)
    return p
