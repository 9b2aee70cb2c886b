"""Wire contracts of kedge: the `.proto` files and their committed generated code.

Only one client/server module per service imports the generated `*_pb2` modules (an import-linter
contract); everything else uses the project's own dataclasses. Regenerate with `scripts/genproto`;
`scripts/verify-genproto` fails on any difference.
"""
