defmodule Horde.HostAppTest do
  # "One dependency line": a host application whose library depends on :horde optionally and
  # compiles its Horde code only when `Horde.Registry` exists (as Sagents does), built from
  # scratch in a temporary directory with `{:horde, path: ..., override: true}`. It must
  # compile, and its Horde code must run against Drove.
  use ExUnit.Case, async: false

  @moduletag :host_app
  @moduletag timeout: 300_000

  @compat Path.expand("../..", __DIR__)

  defp write!(path, text) do
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, text)
  end

  test "a host app with the :horde override compiles and runs a library's guarded Horde code" do
    dir = Path.join(System.tmp_dir!(), "drove_host_app_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)

    # the library: an optional :horde dependency, Horde code behind a compile-time guard
    write!(Path.join(dir, "optlib/mix.exs"), """
    defmodule Optlib.MixProject do
      use Mix.Project
      def project,
        do: [app: :optlib, version: "0.1.0", deps: [{:horde, path: "../nowhere", optional: true}]]
    end
    """)

    write!(Path.join(dir, "optlib/lib/optlib.ex"), """
    defmodule Optlib do
      def horde?, do: Code.ensure_loaded?(Optlib.Registry)
    end

    if Code.ensure_loaded?(Horde.Registry) do
      defmodule Optlib.Registry do
        use Horde.Registry

        def start_link(_), do: Horde.Registry.start_link(__MODULE__, [keys: :unique], name: __MODULE__)

        @impl true
        def init(opts), do: Horde.Registry.init(Keyword.put(opts, :members, :auto))
      end

      defmodule Optlib.Sup do
        use Horde.DynamicSupervisor

        def start_link(_), do: Horde.DynamicSupervisor.start_link(__MODULE__, [strategy: :one_for_one], name: __MODULE__)

        @impl true
        def init(opts), do: Horde.DynamicSupervisor.init(Keyword.put(opts, :members, :auto))
      end
    end
    """)

    # the host: the library plus the one line that swaps Horde for Drove
    write!(Path.join(dir, "host/mix.exs"), """
    defmodule Host.MixProject do
      use Mix.Project
      def project,
        do: [
          app: :host,
          version: "0.1.0",
          deps: [{:optlib, path: "../optlib"}, {:horde, path: #{inspect(@compat)}, override: true}]
        ]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    write!(Path.join(dir, "host/check.exs"), """
    true = Optlib.horde?()
    {:ok, _} = Supervisor.start_link([Optlib.Registry, Optlib.Sup], strategy: :one_for_one)
    {:ok, pid} =
      Horde.DynamicSupervisor.start_child(Optlib.Sup, %{
        id: :a,
        start: {Agent, :start_link, [fn -> 1 end, [name: {:via, Horde.Registry, {Optlib.Registry, :a}}]]}
      })
    [{^pid, nil}] = Horde.Registry.lookup(Optlib.Registry, :a)
    IO.puts("HOST_APP_OK \#{length(Horde.DynamicSupervisor.which_children(Optlib.Sup))}")
    """)

    host = Path.join(dir, "host")
    env = [{"MIX_ENV", "dev"}]
    {out, status} = System.cmd("mix", ["compile"], cd: host, env: env, stderr_to_stdout: true)
    assert status == 0, out

    {out, status} =
      System.cmd("mix", ["run", "check.exs"], cd: host, env: env, stderr_to_stdout: true)

    assert status == 0, out
    assert out =~ "HOST_APP_OK 1"
  end
end
