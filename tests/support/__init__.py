"""What the test packages share, as plain modules (conftest.py files hold fixtures only):

- `adapters`: real PEFT adapters with random weights, published to a real adapter store;
- `engines`: a native engine in-process, and reading its metrics;
- `services`: the inference service and the gateway in-process on loopback ports.

The one way to start a stack in a test: `serve_inference` and then `gateway_before` (or
`start_gateway` with its settings) in-process; `tuneyard.local_stack.LocalStack` where
the services must be real processes. The root `http` and `oai` fixtures talk to the
`gateway` fixture of the test's package.
"""
