-- ferry's own: the rows of the valid paths among the JSON array ?1.
select id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths
  where path in (select value from json_each(?1));
