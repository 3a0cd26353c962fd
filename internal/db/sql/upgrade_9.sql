-- Schema 8 to 9 (Nix 2.0): failed build caching is gone.
drop table FailedPaths;
