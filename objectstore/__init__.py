"""Images in an S3-compatible bucket: the store and what the roles do with it
(:mod:`objectstore.store`), and reading an image wherever the ledger says it is
(:mod:`objectstore.inbox`). Where the bucket is named is the contract's (:mod:`contract.bucket`)."""
