-- ferry's own (not one of Nix's statements): the closure under references
-- of the paths in the JSON array ?1, in one query (computeFSClosure).
with recursive closure(id) as (
  select id from ValidPaths where path in (select value from json_each(?1))
  union
  select reference from Refs join closure on referrer = closure.id
)
select path from ValidPaths join closure using (id);
