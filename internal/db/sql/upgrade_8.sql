-- Schema 7 to 8 (Nix 2.0): ultimately trusted paths and signatures.
alter table ValidPaths add column ultimate integer;
alter table ValidPaths add column sigs text;
