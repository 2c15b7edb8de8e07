//! projection-svc: read models and the read API (issue 4). Nothing here yet.
