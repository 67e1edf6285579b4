-- The keyed digest (HMAC-SHA-256 under a server-side key that is not in the database) of
-- the credential argon2 last accepted for a key, with the fingerprint of the digest key
-- that made it: hex, 80 characters. Lets every replica recognise the key's holder, and
-- tell any other credential wrong, without argon2. NULL until the key is first used.
ALTER TABLE api_keys ADD COLUMN verified_digest TEXT;
