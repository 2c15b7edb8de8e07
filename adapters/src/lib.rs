//! adapters: payments, ledger mirror and object storage behind traits (issues 6-8). Nothing here yet.
