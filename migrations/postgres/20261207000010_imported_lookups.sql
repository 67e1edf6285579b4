-- Imported keys (issue 28, items 3 and 5).
--
-- lookup: after its first use an imported key is found by 'keyed:<hex>', the HMAC of the
--   whole credential under the digest key (not in the database), never by an unkeyed
--   digest: a copy of the database offers no check faster than the hash the key came
--   with. Rows adopted by earlier versions hold 'sha256:<hex>' of the whole credential
--   there; they go back to the form they were imported in (import_ref), and the key's next
--   use, judged by its stored keyed digest or its hash as before, writes the keyed lookup.
--   Nothing is lost for the holder.
-- Both forms are unique within an account only: another account's import of the same
--   form is no conflict (a conflict would tell one tenant another's starts and digests).
--   A credential that matches records of several accounts is tried against each.
DROP INDEX api_keys_by_lookup;
DROP INDEX api_keys_by_import_ref;
UPDATE api_keys SET lookup = import_ref WHERE import_ref IS NOT NULL AND lookup <> import_ref;

CREATE UNIQUE INDEX api_keys_by_lookup ON api_keys (lookup, account_id);
CREATE UNIQUE INDEX api_keys_by_import_ref ON api_keys (import_ref, account_id);
