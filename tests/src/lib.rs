//! End-to-end tests through the real HTTP APIs (issues 3-4). Nothing here yet.
