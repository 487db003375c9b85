# Like the main suite's test/test_helper.exs: the suite needs a distributed node (the
# multi-node tests start peers with Drove.TestCluster, compiled in from ../../test/support).
# `make test-elixir` starts epmd on loopback; a plain `mix test` starts it here.
unless Node.alive?() do
  epmd = System.find_executable("epmd") || "epmd"
  System.cmd(epmd, ["-daemon"], env: [{"ERL_EPMD_ADDRESS", "127.0.0.1"}])

  Enum.reduce_while(1..100, nil, fn _, _ ->
    case System.cmd(epmd, ["-names"], stderr_to_stdout: true) do
      {_, 0} -> {:halt, :ok}
      _ -> Process.sleep(50) && {:cont, nil}
    end
  end)

  Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1})

  # a unique name: the main suite (or another checkout) may be running at the same time
  name = :"horde_compat_test_#{System.unique_integer([:positive])}_#{:os.getpid()}@127.0.0.1"

  case :net_kernel.start([name, :longnames]) do
    {:ok, _} ->
      :ok

    {:error, reason} ->
      raise "could not start distribution (is epmd running?): #{inspect(reason)}"
  end
end

Node.set_cookie(:drove)

# Tests of Horde.DynamicSupervisor and of the strategies need Drove.DynamicSupervisor and
# Drove's distribution strategies. They are tagged and run as soon as those modules exist.
missing =
  for {tag, module} <- [
        drove_supervisor: Drove.DynamicSupervisor,
        drove_strategies: Drove.Distribution.Uniform
      ],
      not Code.ensure_loaded?(module),
      do: tag

if missing != [] do
  IO.puts("compat/horde: excluding #{inspect(missing)}: Drove does not provide them yet")
end

ExUnit.start(exclude: missing)
