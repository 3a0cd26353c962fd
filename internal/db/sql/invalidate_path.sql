delete from ValidPaths where path = ?;
