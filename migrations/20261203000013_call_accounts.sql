-- Named provider accounts: each attempt records the account it was placed
-- through (`calls.account`, the label: `eu` of `vonage:eu`), beside its
-- provider. NULL (attempts placed before accounts had names) is the
-- provider's `default` account. Reconciliation of an ambiguous attempt
-- asks that account alone; a concurrent-call cap counts per account.
ALTER TABLE calls
    ADD COLUMN account text CHECK (account ~ '^[a-z0-9_-]{1,40}$');
