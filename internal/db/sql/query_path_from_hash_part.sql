select path from ValidPaths where path >= ? limit 1;
