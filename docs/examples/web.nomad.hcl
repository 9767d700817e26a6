# A Nomad jobspec for a docker service, as Nomad users write it: Helios runs it unchanged.
# Build the image first: scripts/busybox-image.sh
job "web-nomad" {
  datacenters = ["dc1"] # ignored, with a note: a Helios cluster is one datacenter
  type        = "service"
  priority    = 60

  meta {
    team = "frontend"
  }

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "web" {
    count = 2

    network {
      port "http" {
        to = 8080 # the container port; without `static` the host port is picked
      }
    }

    restart {
      attempts = 2
      interval = "30m"
      delay    = "10s"
      mode     = "fail"
    }

    task "httpd" {
      driver = "docker"

      config {
        image   = "helios-busybox"
        command = "httpd"
        args    = ["-f", "-p", "8080", "-h", "/"]
        ports   = ["http"]
      }

      env {
        GREETING = "hello"
      }

      resources {
        cpu    = 200 # MHz
        memory = 64  # MB
      }

      kill_timeout = "5s"
    }
  }
}
