"""The model both planes share (imports neither plane; only socklb.v1):

- errors: InvalidState, the validation error (the API's INVALID_ARGUMENT)
- names: service names (NAME_RE, MAX_NAME, check_name, validate_name)
- addresses: address and port parsing, the stored form, the 16-byte encoding,
  the host:port grammar (split_host_port, join_host_port)
- protocols: the API's protocols, IPPROTO_* numbers, names, socket state names
- limits: per-service limits (backends, frontends, weight, affinity, Maglev size)
- fqdn: DNS name patterns of FQDN policy (syntax, canonical form, matching, covering)
- frontends: frontend keys and the per-frontend targets of a service
- selection: the selection tables (weighted random, Maglev)
- digest: the digest of a node's desired services
"""
