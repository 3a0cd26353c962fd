-- ferry's own: the references of the valid paths among the JSON array ?1,
-- as (referrer id, reference path) pairs.
select referrer, ValidPaths.path from Refs join ValidPaths on reference = ValidPaths.id
  where referrer in (select id from ValidPaths where path in (select value from json_each(?1)));
