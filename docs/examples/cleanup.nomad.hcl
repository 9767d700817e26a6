# A Nomad batch job with an exec task.
job "cleanup" {
  type = "batch"

  group "cleanup" {
    task "prune" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo pruning old files; sleep 1; echo done"]
      }

      resources {
        cpu    = 100
        memory = 32
      }
    }
  }
}
