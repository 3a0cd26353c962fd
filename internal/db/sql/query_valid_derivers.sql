select v.id, v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?;
