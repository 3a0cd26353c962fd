select id, path from DerivationOutputs where drv = ?;
