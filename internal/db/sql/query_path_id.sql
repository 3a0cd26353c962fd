select id from ValidPaths where path = ?;
