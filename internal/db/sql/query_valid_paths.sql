select path from ValidPaths;
