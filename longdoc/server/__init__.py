"""server: start and supervise a real tritonserver on a model repository (`longdoc serve`).

By concern: `binary` finds the tritonserver (PATH, else nvidia-pytriton's, assembled for
this Python); `lockdown` holds the rules (admin key, restricted APIs, fixed flags);
`options` is `ServeOptions`; `command` builds the argv and the allocator environment;
`probe` reaches a server (ports, readiness); `process` starts, supervises and stops it;
`cli` is `longdoc serve`.
"""
