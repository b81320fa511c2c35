-- Who holds the row now: the token of the live claim (PENDING), of the retry loop's lease or the
-- claim handed over to it (RETRYING), or of a replay (PENDING again). Every state change is
-- conditional on it, so a writer whose claim or lease was taken over changes nothing. NULL when
-- nobody holds it (SENT, FAILED, or a retry waiting for its due time).
ALTER TABLE notifications ADD COLUMN claim_token TEXT;
