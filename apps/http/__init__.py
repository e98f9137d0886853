"""HTTP pieces every app shares: the request base model, the SSE bridge from the engine thread,
the PII log filter and masking, CORS. They live in the shell, so no app owns suite-wide behaviour."""
