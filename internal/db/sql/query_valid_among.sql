-- ferry's own: the valid paths among the JSON array ?1, in one query.
select path from ValidPaths where path in (select value from json_each(?1));
