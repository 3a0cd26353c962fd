-- Schema 9 to 10 (Nix 2.0): content-address assertions.
alter table ValidPaths add column ca text;
