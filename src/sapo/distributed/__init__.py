"""Training in several processes: the launcher's environment (:mod:`.env`), starting processes
(:mod:`.launch`), the process group (:mod:`.world`), FSDP2 sharding (:mod:`.fsdp`) and the gathers that
rebuild a step's batch on every rank (:mod:`.gather`). See docs/distributed.md."""
